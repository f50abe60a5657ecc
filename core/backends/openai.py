"""The OpenAI-compatible chat completions protocol (DashScope compatible mode, vLLM, DeepSeek…)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.backends.base import ChatRequest, ChatResult, MalformedResponseError
from core.backends.prefill import Dialect, apply_prefill
from core.backends.wire import (
    StreamState,
    as_int,
    cached_tokens,
    candidates,
    choice_list,
    feed_choices,
    param_fields,
    usage_of,
)


@dataclass(frozen=True, slots=True)
class OpenAIWire:
    model: str
    dialect: Dialect

    @property
    def path(self) -> str:
        return "chat/completions"

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        prefilled = apply_prefill(request.messages, self.dialect, speaker=request.speaker)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(prefilled.messages),
            **param_fields(request.params),
        }
        if request.character_options is not None:
            body["character_options"] = request.character_options
        body.update(prefilled.extra)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def headers(self, *, stream: bool) -> dict[str, str]:
        return {"Accept": "text/event-stream"} if stream else {}

    def parse(self, payload: Any) -> ChatResult:
        choices = choice_list(payload, "the response")
        usage = usage_of(payload)
        return ChatResult(
            candidates=candidates(choices),
            prompt_tokens=as_int(usage.get("prompt_tokens")),
            completion_tokens=as_int(usage.get("completion_tokens")),
            cached_tokens=cached_tokens(usage),
        )

    def feed(self, payload: Any, state: StreamState) -> None:
        if not isinstance(payload, Mapping):
            raise MalformedResponseError("a stream chunk is not an object")
        feed_choices(payload.get("choices"), state, "delta")
        if isinstance(payload.get("usage"), Mapping):
            usage = usage_of(payload)
            state.set_usage(
                as_int(usage.get("prompt_tokens")),
                as_int(usage.get("completion_tokens")),
                cached_tokens(usage),
            )
