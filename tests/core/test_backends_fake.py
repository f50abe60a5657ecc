"""The fake model server's own contract, which other areas' tests rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fakes.model_server import FakeModelServer, last_messages

MESSAGES = [{"role": "system", "content": "12345678"}, {"role": "user", "content": "abcd"}]


async def test_replier_default_queue_and_usage() -> None:
    seen: list[dict[str, Any]] = []

    def replier(body: dict[str, Any]) -> str:
        seen.append(body)
        return "from replier"

    async with FakeModelServer() as server, httpx.AsyncClient() as client:
        url = server.url + "/v1/chat/completions"
        first = await client.post(url, json={"model": "m", "messages": MESSAGES})
        assert first.json()["choices"][0]["message"]["content"] == "ok"
        assert first.json()["usage"]["prompt_tokens"] == 12 // 4 + 1
        server.replier = replier
        server.reply("queued")
        second = await client.post(url, json={"model": "m", "messages": MESSAGES})
        third = await client.post(url, json={"model": "m", "messages": MESSAGES, "n": 2})
    assert second.json()["choices"][0]["message"]["content"] == "queued"
    texts = [c["message"]["content"] for c in third.json()["choices"]]
    assert texts == ["from replier", "from replier"]
    assert seen == [{"model": "m", "messages": MESSAGES, "n": 2}]


async def test_last_messages_in_both_protocols() -> None:
    async with FakeModelServer() as server, httpx.AsyncClient() as client:
        await client.post(server.url + "/v1/chat/completions", json={"messages": MESSAGES})
        assert last_messages(server) == MESSAGES
        dashscope = server.url + "/api/v1/services/aigc/text-generation/generation"
        reply = await client.post(dashscope, json={"input": {"messages": MESSAGES[:1]}})
        assert last_messages(server) == MESSAGES[:1]
        assert reply.json()["output"]["choices"][0]["message"]["content"] == "ok"
        assert reply.json()["usage"]["input_tokens"] == 8 // 4 + 1
        assert server.requests[-1].path == "/api/v1/services/aigc/text-generation/generation"


async def test_error_shapes_per_protocol() -> None:
    async with FakeModelServer() as server, httpx.AsyncClient() as client:
        server.fail(status=429, retry_after=2)
        openai = await client.post(server.url + "/v1/chat/completions", json={"messages": []})
        server.fail(status=429, retry_after=0.5)
        dashscope = await client.post(
            server.url + "/api/v1/services/aigc/text-generation/generation", json={}
        )
    assert (openai.status_code, openai.headers["retry-after"]) == (429, "2")
    assert openai.json()["error"]["code"] == "limit_requests"
    assert (dashscope.status_code, dashscope.headers["retry-after"]) == (429, "0.5")
    assert dashscope.json()["code"] == "Throttling.RateQuota"


async def test_delayed_replies_are_served_concurrently() -> None:
    async with FakeModelServer() as server, httpx.AsyncClient() as client:
        server.delay = 0.05
        url = server.url + "/v1/chat/completions"
        replies = await asyncio.gather(
            *(client.post(url, json={"messages": MESSAGES}) for _ in range(20))
        )
    assert all(r.status_code == 200 for r in replies)
    assert len(server.requests) == 20


async def test_unknown_path_and_bad_fail_arguments() -> None:
    async with FakeModelServer() as server, httpx.AsyncClient() as client:
        missing = await client.post(server.url + "/v2/other", json={})
        assert missing.status_code == 404
        with pytest.raises(ValueError):
            server.fail()
        with pytest.raises(ValueError):
            server.fail(kind="explode")


async def test_shutdown_releases_a_held_request() -> None:
    async with FakeModelServer() as server:
        server.fail(kind="timeout")
        client = httpx.AsyncClient(timeout=0.2)
        with pytest.raises(httpx.TimeoutException):
            await client.post(server.url + "/v1/chat/completions", json={"messages": []})
        await client.aclose()
    assert len(server.requests) == 1
