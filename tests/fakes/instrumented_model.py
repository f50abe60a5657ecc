"""The fake model server with gauges: concurrency, a hold gate, and errors that echo the key.

Concurrency is counted where it costs money, at the server; the gate holds requests until a
test has arranged what should be waiting; `leak_key` makes the server quote the caller's
Authorization header back in an error, the way careless providers do.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

from aiohttp import web

from tests.fakes.model_server import FakeModelServer


class InstrumentedModelServer(FakeModelServer):
    """`in_flight`/`peak` count requests being served; `arrivals` keeps their bodies in order."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0
        self.arrivals: list[dict[str, object]] = []
        self.gate: asyncio.Event | None = None
        self.quoted: list[str] = []
        self._leaks: deque[tuple[int, bool]] = deque()

    def hold(self) -> None:
        """Park every request that arrives from now on until `release()`."""
        self.gate = asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()

    def leak_key(self, status: int, *, times: int = 1, stream_error: bool = False) -> None:
        """The next `times` requests fail with `status` (or an SSE error event) quoting the key."""
        for _ in range(times):
            self._leaks.append((status, stream_error))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self._leaks:
                status, stream_error = self._leaks.popleft()
                await request.read()
                self.quoted.append(request.headers.get("Authorization", ""))
                return await _leaky(request, status, stream_error)
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            self.arrivals.append(body if isinstance(body, dict) else {})
            if self.gate is not None:
                await self.gate.wait()
            return await super()._handle(request)
        finally:
            self.in_flight -= 1


async def _leaky(request: web.Request, status: int, stream_error: bool) -> web.StreamResponse:
    quoted = request.headers.get("Authorization", "")
    message = f"Incorrect API key provided: {quoted} (header {quoted!r})"
    payload = {"error": {"message": message, "type": "invalid_request_error", "code": message}}
    if not stream_error:
        return web.json_response({**payload, "code": message, "message": message}, status=status)
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(f"event: error\ndata: {json.dumps(payload)}\n\n".encode())
    await response.write_eof()
    return response
