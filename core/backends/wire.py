"""Pieces both wire protocols share: the protocol shape, parameter fields, stream accumulation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from core.backends.base import ChatRequest, ChatResult, GenerationParams, MalformedResponseError


class Wire(Protocol):
    """How one protocol spells a request and reads a reply (pure; the HTTP work is elsewhere)."""

    @property
    def path(self) -> str: ...

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]: ...

    def headers(self, *, stream: bool) -> dict[str, str]: ...

    def parse(self, payload: Any) -> ChatResult: ...

    def feed(self, payload: Any, state: StreamState) -> None: ...


def param_fields(params: GenerationParams) -> dict[str, Any]:
    """Only the parameters that were set; `n` only when it differs from the default 1."""
    fields: dict[str, Any] = {}
    if params.temperature is not None:
        fields["temperature"] = params.temperature
    if params.top_p is not None:
        fields["top_p"] = params.top_p
    if params.seed is not None:
        fields["seed"] = params.seed
    if params.max_tokens is not None:
        fields["max_tokens"] = params.max_tokens
    if params.n != 1:
        fields["n"] = params.n
    if params.logit_bias is not None:
        fields["logit_bias"] = {str(k): int(v) for k, v in params.logit_bias.items()}
    return fields


def as_int(value: Any) -> int:
    """A token count from a usage block; absent, null or odd values count as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def cached_tokens(usage: Mapping[str, Any]) -> int:
    """`cached_tokens` at the top of usage (DashScope) or under `prompt_tokens_details`."""
    if usage.get("cached_tokens") is not None:
        return as_int(usage.get("cached_tokens"))
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping):
        return as_int(details.get("cached_tokens"))
    return 0


def choice_list(container: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(container, Mapping):
        raise MalformedResponseError(f"{what} is not an object")
    choices = container.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponseError(f"{what} has no choices")
    if not all(isinstance(c, Mapping) for c in choices):
        raise MalformedResponseError(f"{what} has a choice that is not an object")
    return choices


def choice_index(choice: Mapping[str, Any], position: int) -> int:
    index = choice.get("index", position)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0 or index > 1024:
        raise MalformedResponseError(f"choice index {index!r} is not a small integer")
    return index


def text_of(message: Any, key: str = "content") -> str:
    """The text of a message/delta; a missing or null content is an empty string."""
    if message is None:
        return ""
    if not isinstance(message, Mapping):
        raise MalformedResponseError("a choice's message is not an object")
    content = message.get(key)
    if content is None:
        return ""
    if not isinstance(content, str):
        raise MalformedResponseError("a choice's content is not text")
    return content


def usage_of(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    usage = payload.get("usage")
    return usage if isinstance(usage, Mapping) else {}


def candidates(choices: list[Mapping[str, Any]]) -> tuple[str, ...]:
    """The message text of each complete choice, in index order."""
    return ordered({choice_index(c, i): text_of(c.get("message")) for i, c in enumerate(choices)})


def feed_choices(choices: Any, state: StreamState, key: str) -> None:
    """Add one chunk's choices to the stream; `key` is where the piece is ("delta"/"message")."""
    if choices is None:
        return
    if not isinstance(choices, list):
        raise MalformedResponseError("a stream chunk's choices is not a list")
    for position, choice in enumerate(choices):
        if not isinstance(choice, Mapping):
            raise MalformedResponseError("a stream choice is not an object")
        state.add(
            choice_index(choice, position), text_of(choice.get(key)), choice.get("finish_reason")
        )


def ordered(texts: Mapping[int, str]) -> tuple[str, ...]:
    """Candidates in index order; an index the server skipped becomes an empty string."""
    if not texts:
        return ()
    return tuple(texts.get(i, "") for i in range(max(texts) + 1))


class StreamState:
    """Accumulates streamed pieces per choice index, finish marks and the latest usage."""

    def __init__(self) -> None:
        self.pieces: dict[int, list[str]] = {}
        self.finished: set[int] = set()
        self.done = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0

    def add(self, index: int, text: str, finish_reason: Any) -> None:
        self.pieces.setdefault(index, []).append(text)
        if finish_reason not in (None, "", "null"):
            self.finished.add(index)

    def set_usage(self, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = prompt, completion, cached

    def complete(self) -> bool:
        """True after `[DONE]`, or when every choice seen has a finish reason."""
        return self.done or (bool(self.pieces) and self.finished >= set(self.pieces))

    def result(self) -> ChatResult:
        if not self.pieces:
            raise MalformedResponseError("the stream carried no choices")
        return ChatResult(
            candidates=ordered({i: "".join(p) for i, p in self.pieces.items()}),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
        )
