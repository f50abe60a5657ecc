"""Pure mapping from what a server said (status, error object) to the backend's error types."""

from __future__ import annotations

import json
from typing import Any

from core.backends.base import (
    AuthError,
    BackendError,
    ModerationError,
    RequestRejectedError,
)
from core.backends.retry import TransientFault, parse_retry_after

_TRANSIENT_STATUSES = frozenset({408, 429})
_TRANSIENT_CODE_HINTS = (
    "throttl",
    "limit_requests",
    "ratelimit",
    "rate_limit",
    "internal",
    "timeout",
    "unavailable",
    "overload",
)
_DETAIL_LIMIT = 300


def redact(text: str, secret: str | None) -> str:
    """Replace every occurrence of the secret; a server echoing the key must not leak it."""
    return text.replace(secret, "***") if secret else text


def error_fields(payload: Any) -> tuple[str, str] | None:
    """(code, message) of an error object in either protocol's shape, or None if it is not one.

    OpenAI-compatible: `{"error": {"code", "type", "message"}}`; DashScope native:
    `{"code": "DataInspectionFailed", "message": ...}` (an empty code means success).
    """
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or ""
        return str(code), str(error.get("message") or "")
    if isinstance(error, str) and error:
        return "", error
    code = payload.get("code")
    if isinstance(code, str) and code:
        return code, str(payload.get("message") or "")
    return None


def is_moderation(code: str) -> bool:
    return "datainspectionfailed" in code.replace("_", "").replace("-", "").lower()


def lenient_json(text: str) -> Any:
    """An error body as JSON, also when it came as SSE (`data:{...}`); None if neither."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in text.splitlines():
        if line.startswith("data:"):
            try:
                return json.loads(line[5:].strip())
            except ValueError:
                return None
    return None


def _detail(code: str, message: str, secret: str | None) -> str:
    parts = [p for p in (code, message.strip()) if p]
    if not parts:
        return ""
    text = redact(": ".join(parts), secret)
    if len(text) > _DETAIL_LIMIT:
        text = text[:_DETAIL_LIMIT] + "…"
    return f": {text}"


def fault_from_status(
    status: int, body: str, *, host: str, retry_after: str | None, secret: str | None
) -> BackendError | TransientFault:
    """The exception for a non-2xx answer: fatal, moderation, retryable, or rejected."""
    if status in (401, 403):
        return AuthError(
            f"the API key was rejected by {host} (HTTP {status}); "
            "check the environment variable named in [llm] api_key_env"
        )
    code, message = error_fields(lenient_json(body)) or ("", "")
    detail = _detail(code, message, secret)
    if is_moderation(code):
        return ModerationError(f"{host} refused the content (HTTP {status}{detail})")
    if status in _TRANSIENT_STATUSES or status >= 500:
        return TransientFault(f"HTTP {status}{detail}", parse_retry_after(retry_after))
    if 300 <= status < 400:
        return RequestRejectedError(
            f"{host} answered with a redirect (HTTP {status}); check the configured base_url"
        )
    hint = "; check the configured base_url and model" if status in (404, 405) else ""
    return RequestRejectedError(f"{host} rejected the request (HTTP {status}{detail}){hint}")


def fault_from_error_object(
    code: str, message: str, *, host: str, secret: str | None
) -> BackendError | TransientFault:
    """The exception for an error object that arrived inside a 200 answer or a stream."""
    detail = _detail(code, message, secret)
    if is_moderation(code):
        return ModerationError(f"{host} refused the content{detail}")
    lowered = code.lower()
    if any(hint in lowered for hint in _TRANSIENT_CODE_HINTS):
        return TransientFault(f"error from {host}{detail}")
    return RequestRejectedError(f"{host} reported an error{detail}")
