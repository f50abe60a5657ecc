"""Model backends: OpenAI-compatible and DashScope native over httpx, behind one factory."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import httpx

from core.backends.base import (
    AuthError,
    Backend,
    BackendError,
    ChatRequest,
    ChatResult,
    GenerationParams,
    GiveUpError,
    MalformedResponseError,
    ModerationError,
    RequestRejectedError,
)
from core.backends.dashscope import DashScopeWire
from core.backends.http import HttpBackend
from core.backends.openai import OpenAIWire
from core.backends.prefill import apply_prefill, resolve_dialect
from core.backends.wire import Wire

PROVIDERS: tuple[str, ...] = ("openai", "dashscope")

__all__ = [
    "PROVIDERS",
    "AuthError",
    "Backend",
    "BackendError",
    "ChatRequest",
    "ChatResult",
    "GenerationParams",
    "GiveUpError",
    "MalformedResponseError",
    "ModerationError",
    "RequestRejectedError",
    "apply_prefill",
    "make_backend",
    "resolve_dialect",
]


def make_backend(
    *,
    provider: str,
    base_url: str,
    api_key: str | None,
    model: str,
    prefill: str,
    timeout_s: float = 60.0,
    max_retries: int = 4,
    stream: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Backend:
    """Build the backend for `provider` ("openai" or "dashscope"); bad settings raise ValueError."""
    dialect = resolve_dialect(prefill, provider=provider, base_url=base_url)
    wire: Wire
    if provider == "openai":
        wire = OpenAIWire(model, dialect)
    elif provider == "dashscope":
        wire = DashScopeWire(model, dialect)
    else:
        raise ValueError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https:// (got {base_url!r})")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    if max_retries < 0:
        raise ValueError("max_retries must not be negative")
    return HttpBackend(
        wire,
        base_url=base_url,
        api_key=api_key,
        timeout_s=timeout_s,
        max_retries=max_retries,
        stream=stream,
        sleep=sleep,
        rng=rng if rng is not None else random.Random(),
        transport=transport,
    )
