"""DashScope's native text-generation protocol (input/parameters/output, `X-DashScope-SSE`)."""

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
class DashScopeWire:
    model: str
    dialect: Dialect

    @property
    def path(self) -> str:
        return "services/aigc/text-generation/generation"

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        prefilled = apply_prefill(request.messages, self.dialect, speaker=request.speaker)
        parameters: dict[str, Any] = {"result_format": "message", **param_fields(request.params)}
        if request.character_options is not None:
            parameters["character_options"] = request.character_options
        parameters.update(prefilled.extra)
        if stream:
            parameters["incremental_output"] = True
        return {
            "model": self.model,
            "input": {"messages": list(prefilled.messages)},
            "parameters": parameters,
        }

    def headers(self, *, stream: bool) -> dict[str, str]:
        return {"X-DashScope-SSE": "enable", "Accept": "text/event-stream"} if stream else {}

    def parse(self, payload: Any) -> ChatResult:
        if not isinstance(payload, Mapping):
            raise MalformedResponseError("the response is not an object")
        choices = choice_list(payload.get("output"), "the response's output")
        usage = usage_of(payload)
        return ChatResult(
            candidates=candidates(choices),
            prompt_tokens=as_int(usage.get("input_tokens")),
            completion_tokens=as_int(usage.get("output_tokens")),
            cached_tokens=cached_tokens(usage),
        )

    def feed(self, payload: Any, state: StreamState) -> None:
        if not isinstance(payload, Mapping) or not isinstance(payload.get("output"), Mapping):
            raise MalformedResponseError("a stream chunk has no output")
        feed_choices(payload["output"].get("choices"), state, "message")
        if isinstance(payload.get("usage"), Mapping):
            usage = usage_of(payload)
            state.set_usage(
                as_int(usage.get("input_tokens")),
                as_int(usage.get("output_tokens")),
                cached_tokens(usage),
            )
