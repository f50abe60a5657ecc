"""What the orchestrator hands a model backend, what it gets back, and how a call can fail."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling options; None means "let the server use its default" and is not sent."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    n: int = 1
    logit_bias: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One generation from one character's point of view.

    `messages` are in canonical form: the last one may be an assistant prefill
    `{"role": "assistant", "content": "Name:", "partial": True}`, which each backend
    rewrites into its server's dialect.
    """

    messages: tuple[Mapping[str, Any], ...]
    params: GenerationParams = GenerationParams()
    session_id: str | None = None
    character_options: Mapping[str, Any] | None = None
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The raw text of each candidate (index order) and the usage the server reported."""

    candidates: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Backend(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResult: ...

    async def aclose(self) -> None: ...


class BackendError(Exception):
    """Base of every failure a backend reports; the message never contains the API key."""


class AuthError(BackendError):
    """The server rejected the API key (401/403): fatal, retrying cannot help."""


class ModerationError(BackendError):
    """The provider's content moderation refused the prompt or the output."""


class GiveUpError(BackendError):
    """Transient faults (429, 5xx, timeouts, resets, broken streams) outlasted the retries."""


class MalformedResponseError(BackendError):
    """The server answered 200 with a body that is not the expected JSON shape."""


class RequestRejectedError(BackendError):
    """Any other 4xx: the request itself is wrong (bad parameter, unknown model, bad URL)."""
