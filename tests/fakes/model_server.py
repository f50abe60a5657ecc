"""A loopback fake of an OpenAI-compatible and a DashScope-native model server (aiohttp).

Tests start it in-process on 127.0.0.1 with an ephemeral port, queue replies or faults,
and inspect the requests it recorded; it speaks each protocol's own reply, stream and
error shapes so backends are exercised over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

Reply = str | list[str]
Replier = Callable[[dict[str, Any]], Reply]
Protocol = Literal["openai", "dashscope"]

OPENAI_SUFFIX = "/chat/completions"
DASHSCOPE_SUFFIX = "/services/aigc/text-generation/generation"
FAULT_KINDS = ("timeout", "reset", "malformed", "moderation", "broken_stream", "auth")
_HOLD_S = 30.0
_PIECE = 5
_MODERATION_MESSAGE = "Output data may contain inappropriate content."


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int | None
    kind: str | None
    retry_after: float | None


def last_messages(server: FakeModelServer) -> list[dict[str, Any]]:
    """The messages of the most recent request, whichever protocol it used."""
    body = server.requests[-1].body
    if "messages" in body:
        return list(body["messages"])
    return list(body["input"]["messages"])


def _default_replier(body: dict[str, Any]) -> Reply:
    return "ok"


class FakeModelServer:
    """`async with FakeModelServer() as server:` then point a backend at `server.url`."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.replier: Replier = _default_replier
        self.delay = 0.0
        self.usage: dict[str, int] | None = None
        self._replies: deque[Reply] = deque()
        self._faults: deque[_Fault] = deque()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._serial = 0

    async def __aenter__(self) -> FakeModelServer:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reply(self, text: Reply) -> None:
        """Queue a reply (a list gives one text per candidate); consumed in order."""
        self._replies.append(text)

    def fail(
        self,
        status: int | None = None,
        *,
        kind: str | None = None,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` requests fail with an HTTP status or a fault kind."""
        if status is None and kind is None:
            raise ValueError("fail() needs a status or a kind")
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
        for _ in range(times):
            self._faults.append(_Fault(status, kind, retry_after))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        protocol = _protocol_of(request.path)
        if protocol is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(
            RecordedRequest(request.path, headers, body if isinstance(body, dict) else {})
        )
        if not isinstance(body, dict):
            return _error(protocol, 400, "InvalidParameter", "the body is not a JSON object")
        await self._pause(self.delay)
        stream = _is_stream(protocol, body, headers)
        if self._faults:
            return await self._fault(request, protocol, stream, self._faults.popleft())
        texts = self._texts(body)
        usage = self._usage(protocol, body, texts)
        if stream:
            return await self._stream(request, protocol, body, texts, usage)
        return web.json_response(self._completion(protocol, body, texts, usage))

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def _texts(self, body: dict[str, Any]) -> list[str]:
        source = self._replies.popleft() if self._replies else self.replier(body)
        texts = [source] if isinstance(source, str) else list(source) or [""]
        n = _n_of(body)
        return [texts[min(i, len(texts) - 1)] for i in range(n)]

    def _usage(self, protocol: Protocol, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        counts = {
            "prompt_tokens": _content_chars(_messages_of(body)) // 4 + 1,
            "completion_tokens": sum(len(t) for t in texts) // 4 + 1,
            "cached_tokens": 0,
            **(self.usage or {}),
        }
        prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
        if protocol == "openai":
            return {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": counts["cached_tokens"]},
            }
        return {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": counts["cached_tokens"],
        }

    def _next_id(self) -> str:
        self._serial += 1
        return f"fake-{self._serial}"

    def _completion(
        self, protocol: Protocol, body: dict[str, Any], texts: list[str], usage: dict[str, Any]
    ) -> dict[str, Any]:
        if protocol == "openai":
            return {
                "id": f"chatcmpl-{self._next_id()}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                    for i, text in enumerate(texts)
                ],
                "usage": usage,
            }
        return {
            "output": {
                "choices": [
                    {
                        "finish_reason": "stop",
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                    }
                    for i, text in enumerate(texts)
                ]
            },
            "usage": usage,
            "request_id": str(uuid.uuid4()),
        }

    async def _stream(
        self,
        request: web.Request,
        protocol: Protocol,
        body: dict[str, Any],
        texts: list[str],
        usage: dict[str, Any],
        *,
        cut: bool = False,
        moderation: bool = False,
    ) -> web.StreamResponse:
        """Stream the texts; `cut` closes the socket halfway, `moderation` ends with an error."""
        response = await _open_sse(request)
        frames = list(self._frames(protocol, body, texts, usage))
        if cut or moderation:
            frames = frames[: max(1, len(frames) // 2)]
        for frame in frames:
            await response.write(frame)
        if cut:
            _drop(request)
            return response
        if moderation:
            await response.write(_stream_error(protocol))
        elif protocol == "openai":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _frames(
        self, protocol: Protocol, body: dict[str, Any], texts: list[str], usage: dict[str, Any]
    ) -> Iterator[bytes]:
        pieces = [_split(text) for text in texts]
        longest = max(len(p) for p in pieces)
        chunk_id = self._next_id()
        if protocol == "openai":
            for i in range(len(texts)):
                yield _openai_chunk(chunk_id, body, i, {"role": "assistant", "content": ""}, None)
            for step in range(longest):
                for i, parts in enumerate(pieces):
                    if step < len(parts):
                        yield _openai_chunk(chunk_id, body, i, {"content": parts[step]}, None)
            for i in range(len(texts)):
                yield _openai_chunk(chunk_id, body, i, {}, "stop")
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                head = {"id": chunk_id, "object": "chat.completion.chunk", "choices": []}
                yield _sse_data({**head, "usage": usage})
            return
        incremental = bool(body.get("parameters", {}).get("incremental_output"))
        sent = [""] * len(texts)
        serial = 0
        for step in range(longest):
            for i, parts in enumerate(pieces):
                if step >= len(parts):
                    continue
                sent[i] += parts[step]
                last = step == len(parts) - 1
                serial += 1
                chunk: dict[str, Any] = {
                    "output": {
                        "choices": [
                            {
                                "message": {
                                    "content": parts[step] if incremental else sent[i],
                                    "role": "assistant",
                                },
                                "finish_reason": "stop" if last else "null",
                                "index": i,
                            }
                        ]
                    },
                    "usage": {
                        **usage,
                        "output_tokens": sum(len(s) for s in sent) // 4 + 1,
                    },
                    "request_id": chunk_id,
                }
                yield _dashscope_frame(serial, "result", 200, chunk)

    async def _fault(
        self, request: web.Request, protocol: Protocol, stream: bool, fault: _Fault
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "timeout":
            await self._pause(_HOLD_S)
            _drop(request)
            return web.Response(status=504)
        if kind == "reset":
            _drop(request)
            return web.Response(status=502)
        if kind == "auth":
            return _error(protocol, fault.status or 401, *_CODES["auth"][protocol])
        if kind == "moderation":
            if stream and fault.status is None:
                texts = ["partial reply before moderation"]
                usage = self._usage(protocol, {}, texts)
                return await self._stream(request, protocol, {}, texts, usage, moderation=True)
            return _error(protocol, fault.status or 400, *_CODES["moderation"][protocol])
        if kind == "malformed":
            if stream:
                response = await _open_sse(request)
                await response.write(b'data: {"choices": [\n\n')
                await response.write_eof()
                return response
            return web.Response(status=200, text='{"choices": [', content_type="application/json")
        if kind == "broken_stream":
            texts = ["this reply never finishes arriving"]
            usage = self._usage(protocol, {}, texts)
            if stream:
                return await self._stream(request, protocol, {}, texts, usage, cut=True)
            return await _cut_body(request, self._completion(protocol, {}, texts, usage))
        status = fault.status or 500
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _number(fault.retry_after)
        return _error(protocol, status, *_status_code(protocol, status), headers=headers)


_CODES: dict[str, dict[str, tuple[str, str]]] = {
    "auth": {
        "openai": ("invalid_api_key", "Incorrect API key provided."),
        "dashscope": ("InvalidApiKey", "Invalid API-key provided."),
    },
    "moderation": {
        "openai": ("data_inspection_failed", "Input data may contain inappropriate content."),
        "dashscope": ("DataInspectionFailed", "Input data may contain inappropriate content."),
    },
    "throttle": {
        "openai": ("limit_requests", "Requests rate limit exceeded, please try again later."),
        "dashscope": ("Throttling.RateQuota", "Requests rate limit exceeded."),
    },
    "internal": {
        "openai": ("internal_error", "An internal error has occured, please try again later."),
        "dashscope": ("InternalError", "An internal error has occured."),
    },
    "invalid": {
        "openai": ("invalid_parameter_error", "The request is invalid."),
        "dashscope": ("InvalidParameter", "The request is invalid."),
    },
}


def _status_code(protocol: Protocol, status: int) -> tuple[str, str]:
    if status in (401, 403):
        return _CODES["auth"][protocol]
    if status == 429:
        return _CODES["throttle"][protocol]
    if status >= 500:
        return _CODES["internal"][protocol]
    return _CODES["invalid"][protocol]


def _error(
    protocol: Protocol,
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    if protocol == "openai":
        payload: dict[str, Any] = {
            "error": {"message": message, "type": code, "param": None, "code": code},
            "request_id": str(uuid.uuid4()),
        }
    else:
        payload = {"code": code, "message": message, "request_id": str(uuid.uuid4())}
    return web.json_response(payload, status=status, headers=headers)


def _stream_error(protocol: Protocol) -> bytes:
    code, _ = _CODES["moderation"][protocol]
    if protocol == "openai":
        error = {"code": code, "message": _MODERATION_MESSAGE, "type": code}
        return _sse_data({"error": error})
    payload = {"code": code, "message": _MODERATION_MESSAGE, "request_id": str(uuid.uuid4())}
    return _dashscope_frame(0, "error", 400, payload)


def _protocol_of(path: str) -> Protocol | None:
    if path.endswith(OPENAI_SUFFIX):
        return "openai"
    if path.endswith(DASHSCOPE_SUFFIX):
        return "dashscope"
    return None


def _is_stream(protocol: Protocol, body: dict[str, Any], headers: dict[str, str]) -> bool:
    if protocol == "openai":
        return body.get("stream") is True
    return headers.get("x-dashscope-sse", "").lower() == "enable"


def _n_of(body: dict[str, Any]) -> int:
    params = body.get("parameters")
    n = params.get("n", 1) if isinstance(params, dict) else body.get("n", 1)
    return n if isinstance(n, int) and n >= 1 else 1


def _messages_of(body: dict[str, Any]) -> list[Any]:
    if isinstance(body.get("messages"), list):
        return list(body["messages"])
    source = body.get("input")
    if isinstance(source, dict) and isinstance(source.get("messages"), list):
        return list(source["messages"])
    return []


def _content_chars(messages: list[Any]) -> int:
    return sum(
        len(m["content"])
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )


def _split(text: str) -> list[str]:
    return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _sse_data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _dashscope_frame(serial: int, event: str, status: int, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False)
    return f"id:{serial}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode()


def _openai_chunk(
    chunk_id: str, body: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None
) -> bytes:
    return _sse_data(
        {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model"),
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }
    )


async def _open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"}
    )
    await response.prepare(request)
    return response


async def _cut_body(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    """Announce the whole body, send half of it, then drop the connection."""
    data = json.dumps(payload).encode()
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _drop(request)
    return response


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
