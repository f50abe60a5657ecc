"""The HTTP side of a backend: one httpx client, retries, status mapping and SSE reading."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from core.backends.base import ChatRequest, ChatResult, MalformedResponseError
from core.backends.faults import (
    error_fields,
    fault_from_error_object,
    fault_from_status,
    redact,
)
from core.backends.retry import RetryPolicy, TransientFault, with_retries
from core.backends.sse import SseDecoder, SseEvent
from core.backends.wire import StreamState, Wire

# httpx logs every request URL at INFO; keep that (and httpcore's chatter) out of the logs.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

T = TypeVar("T")


def host_label(base_url: str) -> str:
    """Host (and explicit port) for messages: never the path, query or credentials."""
    url = httpx.URL(base_url)
    return f"{url.host}:{url.port}" if url.port else url.host


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


class HttpBackend:
    """A Backend speaking one wire protocol to one base URL, retrying transient faults."""

    def __init__(
        self,
        wire: Wire,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        max_retries: int,
        stream: bool,
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._wire = wire
        self._url = base_url.rstrip("/") + "/" + wire.path
        self._host = host_label(base_url)
        self._secret = api_key or None
        self._timeout_s = timeout_s
        self._stream = stream
        self._policy = RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._rng = rng
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        """Created on first use: building the TLS context costs ~0.1 s at start-up."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(self._timeout_s),
                transport=self._transport,
            )
        return self._http

    async def complete(self, request: ChatRequest) -> ChatResult:
        body = self._wire.body(request, stream=self._stream)
        content = json.dumps(body, ensure_ascii=False, default=_jsonable).encode("utf-8")
        headers = self._wire.headers(stream=self._stream)
        if request.session_id:
            headers["x-dashscope-aca-session"] = request.session_id
        return await with_retries(
            lambda: self._attempt(content, headers),
            policy=self._policy,
            sleep=self._sleep,
            rng=self._rng,
            where=self._host,
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _attempt(self, content: bytes, headers: dict[str, str]) -> ChatResult:
        try:
            if self._stream:
                return await self._attempt_stream(content, headers)
            response = await self._client.post(self._url, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientFault(
                f"no answer within {self._timeout_s:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientFault(self._connection_cause(exc)) from exc
        except httpx.DecodingError as exc:
            raise MalformedResponseError(f"{self._host} sent an undecodable body") from exc
        self._check_status(response)
        return self._parse_body(response.content)

    async def _attempt_stream(self, content: bytes, headers: dict[str, str]) -> ChatResult:
        state = StreamState()
        async with self._client.stream(
            "POST", self._url, content=content, headers=headers
        ) as response:
            if not response.is_success:
                await response.aread()
                self._check_status(response)
            if response.headers.get("content-type", "").startswith("application/json"):
                return self._parse_body(await response.aread())
            decoder = SseDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                if event is not None:
                    self._on_event(event, state)
            tail = decoder.flush()
            if tail is not None:
                self._on_event(tail, state)
        if not state.complete():
            raise TransientFault("the stream ended before the reply was complete")
        return self._guard(state.result)

    def _on_event(self, event: SseEvent, state: StreamState) -> None:
        if event.data.strip() == "[DONE]":
            state.done = True
            return
        payload = self._loads(event.data.encode("utf-8"))
        error = error_fields(payload)
        if error is None and event.event == "error":
            error = ("", event.data)
        if error is not None:
            raise fault_from_error_object(*error, host=self._host, secret=self._secret)
        self._guard(lambda: self._wire.feed(payload, state))

    def _check_status(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        raise fault_from_status(
            response.status_code,
            response.text,
            host=self._host,
            retry_after=response.headers.get("retry-after"),
            secret=self._secret,
        )

    def _parse_body(self, raw: bytes) -> ChatResult:
        payload = self._loads(raw)
        error = error_fields(payload)
        if error is not None:
            raise fault_from_error_object(*error, host=self._host, secret=self._secret)
        return self._guard(lambda: self._wire.parse(payload))

    def _loads(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise MalformedResponseError(
                f"{self._host} sent a body that is not valid JSON ({len(raw)} bytes)"
            ) from exc

    def _guard(self, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except MalformedResponseError as exc:
            raise MalformedResponseError(f"unexpected response from {self._host}: {exc}") from exc

    def _connection_cause(self, exc: httpx.TransportError) -> str:
        detail = redact(str(exc), self._secret) or "no detail"
        return f"connection error ({type(exc).__name__}: {detail})"
