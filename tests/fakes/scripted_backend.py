"""An in-process model Backend: answers from a script and keeps every request it was sent.

For property tests that run hundreds of conversations, where a socket per example would only
add time; the requests it records are the engine's canonical messages, before any wire format.
"""

from __future__ import annotations

from collections.abc import Callable

from core.backends.base import ChatRequest, ChatResult

Answer = Callable[[ChatRequest], str]


class ScriptedBackend:
    """Replies with `answer(request)` and reports usage of one token per four characters."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[ChatRequest] = []
        self.closed = False

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        text = self.answer(request)
        prompt = sum(len(str(m.get("content", ""))) for m in request.messages)
        return ChatResult((text,) * request.params.n, prompt // 4 + 1, len(text) // 4 + 1, 0)

    async def aclose(self) -> None:
        self.closed = True
