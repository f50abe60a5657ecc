"""The backends against the fake model server over real sockets: bodies, streams, faults."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from core.backends import (
    AuthError,
    Backend,
    ChatRequest,
    GenerationParams,
    GiveUpError,
    MalformedResponseError,
    ModerationError,
    RequestRejectedError,
    make_backend,
)
from tests.fakes.model_server import FakeModelServer, last_messages

KEY = "sk-test-7f3a9c1e5b2d4f60"
MODEL = "qwen-plus-character"
OPENAI_PATH = "/v1/chat/completions"
DASHSCOPE_PATH = "/api/v1/services/aigc/text-generation/generation"

SYSTEM = {
    "role": "system",
    "content": "In a group chat scenario for musicians, Ling Lu is a 25-year-old musical genius.",
}
GROUP = (
    SYSTEM,
    {"role": "user", "content": "Cheng Yi: Are you guys free tomorrow?"},
    {
        "role": "assistant",
        "content": "Ling Lu: How about an impromptu collaboration live stream some other day?",
    },
    {"role": "user", "content": "Tao Le: I'm in!"},
)
PREFILL = {"role": "assistant", "content": "Ling Lu:", "partial": True}
PLAIN = [dict(m) for m in GROUP]


class Sleeps:
    """The injected sleep: records what the backend asked for, never waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


Make = Callable[..., Backend]


@pytest.fixture
async def server() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as fake:
        yield fake


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make(server: FakeModelServer, sleeps: Sleeps) -> AsyncIterator[Make]:
    made: list[Backend] = []

    def factory(provider: str = "openai", **overrides: Any) -> Backend:
        base = server.url + ("/v1" if provider == "openai" else "/api/v1")
        options: dict[str, Any] = {
            "provider": provider,
            "base_url": base,
            "api_key": KEY,
            "model": MODEL,
            "prefill": "partial",
            "timeout_s": 5.0,
            "sleep": sleeps,
            "rng": random.Random(3),
        }
        options.update(overrides)
        backend = make_backend(**options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.aclose()


def group_request(**kwargs: Any) -> ChatRequest:
    return ChatRequest(messages=(*GROUP, PREFILL), **kwargs)


FULL_PARAMS = GenerationParams(
    temperature=0.7, top_p=0.8, seed=1234, max_tokens=40, n=2, logit_bias={"7": -100, "8": -100}
)
FULL_PARAM_FIELDS = {
    "temperature": 0.7,
    "top_p": 0.8,
    "seed": 1234,
    "max_tokens": 40,
    "n": 2,
    "logit_bias": {"7": -100, "8": -100},
}


async def test_openai_request_and_reply(server: FakeModelServer, make: Make) -> None:
    server.reply(["Hmph, fine.", "Tomorrow? Busy."])
    result = await make("openai").complete(group_request(params=FULL_PARAMS))
    sent = server.requests[-1]
    assert sent.path == OPENAI_PATH
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert "x-dashscope-aca-session" not in sent.headers
    assert sent.body == {
        "model": MODEL,
        "messages": [*PLAIN, {"role": "assistant", "content": "Ling Lu:", "partial": True}],
        **FULL_PARAM_FIELDS,
    }
    assert result.candidates == ("Hmph, fine.", "Tomorrow? Busy.")
    assert result.prompt_tokens == sum(len(m["content"]) for m in last_messages(server)) // 4 + 1
    assert result.completion_tokens == len("Hmph, fine.Tomorrow? Busy.") // 4 + 1
    assert result.cached_tokens == 0


async def test_dashscope_request_and_reply(server: FakeModelServer, make: Make) -> None:
    server.reply(["Hmph, fine.", "Tomorrow? Busy."])
    result = await make("dashscope").complete(group_request(params=FULL_PARAMS))
    sent = server.requests[-1]
    assert sent.path == DASHSCOPE_PATH
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert "x-dashscope-sse" not in sent.headers
    assert sent.body == {
        "model": MODEL,
        "input": {
            "messages": [*PLAIN, {"role": "assistant", "content": "Ling Lu:", "partial": True}]
        },
        "parameters": {"result_format": "message", **FULL_PARAM_FIELDS},
    }
    assert result.candidates == ("Hmph, fine.", "Tomorrow? Busy.")
    assert result.completion_tokens == len("Hmph, fine.Tomorrow? Busy.") // 4 + 1


async def test_defaults_send_no_optional_params(server: FakeModelServer, make: Make) -> None:
    await make("openai").complete(ChatRequest(messages=GROUP))
    assert server.requests[-1].body == {"model": MODEL, "messages": PLAIN}
    await make("dashscope").complete(ChatRequest(messages=GROUP))
    assert server.requests[-1].body == {
        "model": MODEL,
        "input": {"messages": PLAIN},
        "parameters": {"result_format": "message"},
    }


NAME_LINE = {
    "role": "system",
    "content": "Reply as Ling Lu with one message, without writing your name.",
}
TRAILING = {"role": "assistant", "content": "Ling Lu:"}
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


@pytest.mark.parametrize(
    ("prefill", "last", "extra"),
    [
        ("partial", {**TRAILING, "partial": True}, {}),
        ("prefix", {**TRAILING, "prefix": True}, {}),
        ("continue_final_message", TRAILING, CONTINUE),
        ("auto", TRAILING, {**CONTINUE, "chat_template_kwargs": {"enable_thinking": False}}),
        ("none", NAME_LINE, {}),
    ],
)
async def test_openai_prefill_dialects_exact_body(
    server: FakeModelServer,
    make: Make,
    prefill: str,
    last: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    await make("openai", prefill=prefill).complete(group_request(speaker="Ling Lu"))
    assert server.requests[-1].body == {"model": MODEL, "messages": [*PLAIN, last], **extra}


@pytest.mark.parametrize(
    ("prefill", "last", "extra"),
    [
        ("auto", {**TRAILING, "partial": True}, {}),
        ("partial", {**TRAILING, "partial": True}, {}),
        ("prefix", {**TRAILING, "prefix": True}, {}),
        ("continue_final_message", TRAILING, CONTINUE),
        ("none", NAME_LINE, {}),
    ],
)
async def test_dashscope_prefill_dialects_put_extras_in_parameters(
    server: FakeModelServer,
    make: Make,
    prefill: str,
    last: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    await make("dashscope", prefill=prefill).complete(group_request(speaker="Ling Lu"))
    assert server.requests[-1].body == {
        "model": MODEL,
        "input": {"messages": [*PLAIN, last]},
        "parameters": {"result_format": "message", **extra},
    }


@pytest.mark.parametrize("prefill", ["partial", "prefix", "continue_final_message", "auto", "none"])
async def test_request_without_prefill_is_sent_unchanged(
    server: FakeModelServer, make: Make, prefill: str
) -> None:
    await make("openai", prefill=prefill).complete(ChatRequest(messages=GROUP, speaker="Ling Lu"))
    assert server.requests[-1].body == {"model": MODEL, "messages": PLAIN}


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_n_candidates_repeat_the_last_queued_reply(
    server: FakeModelServer, make: Make, provider: str
) -> None:
    server.reply(["one", "two"])
    result = await make(provider).complete(group_request(params=GenerationParams(n=3)))
    assert result.candidates == ("one", "two", "two")


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_session_header_and_long_term_memory(
    server: FakeModelServer, make: Make, provider: str
) -> None:
    options = {
        "profile": "You are Jiang Rang.",
        "memory": {"enable_long_term_memory": True, "memory_entries": 50, "skip_save_types": []},
    }
    request = ChatRequest(
        messages=({"role": "user", "content": "The weather is great today"},),
        session_id="user_123_session_xxx",
        character_options=options,
    )
    await make(provider).complete(request)
    sent = server.requests[-1]
    assert sent.headers["x-dashscope-aca-session"] == "user_123_session_xxx"
    if provider == "openai":
        assert sent.body["character_options"] == options
    else:
        assert sent.body["parameters"]["character_options"] == options
        assert "character_options" not in sent.body


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_usage_with_cached_tokens(server: FakeModelServer, make: Make, provider: str) -> None:
    server.usage = {"prompt_tokens": 163, "completion_tokens": 35, "cached_tokens": 160}
    result = await make(provider).complete(group_request())
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (163, 35, 160)


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_trailing_slash_and_no_api_key(
    server: FakeModelServer, make: Make, provider: str
) -> None:
    base = server.url + ("/v1/" if provider == "openai" else "/api/v1/")
    await make(provider, base_url=base, api_key=None).complete(group_request())
    sent = server.requests[-1]
    assert sent.path == (OPENAI_PATH if provider == "openai" else DASHSCOPE_PATH)
    assert "authorization" not in sent.headers


async def test_openai_streaming(server: FakeModelServer, make: Make) -> None:
    server.reply(["Hmph, who asked you to be so eager?", "Fine, count me in."])
    server.usage = {"prompt_tokens": 50, "completion_tokens": 12, "cached_tokens": 32}
    result = await make("openai", stream=True).complete(group_request(params=GenerationParams(n=2)))
    sent = server.requests[-1]
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["accept"] == "text/event-stream"
    assert result.candidates == ("Hmph, who asked you to be so eager?", "Fine, count me in.")
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (50, 12, 32)


async def test_dashscope_streaming(server: FakeModelServer, make: Make) -> None:
    server.reply(["Hmph, who asked you to be so eager?", "Fine, count me in."])
    server.usage = {"prompt_tokens": 50, "cached_tokens": 32}
    backend = make("dashscope", stream=True)
    result = await backend.complete(group_request(params=GenerationParams(n=2)))
    sent = server.requests[-1]
    assert sent.headers["x-dashscope-sse"] == "enable"
    assert sent.body["parameters"]["incremental_output"] is True
    assert "stream" not in sent.body
    assert result.candidates == ("Hmph, who asked you to be so eager?", "Fine, count me in.")
    assert (result.prompt_tokens, result.cached_tokens) == (50, 32)
    assert result.completion_tokens == len("".join(result.candidates)) // 4 + 1


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
@pytest.mark.parametrize("stream", [False, True])
async def test_429_honours_retry_after(
    server: FakeModelServer, make: Make, sleeps: Sleeps, provider: str, stream: bool
) -> None:
    server.fail(status=429, retry_after=1, times=1)
    server.reply("after the wait")
    result = await make(provider, stream=stream).complete(group_request())
    assert result.candidates == ("after the wait",)
    assert sleeps.calls == [1.0]
    assert len(server.requests) == 2


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_500_then_success_backs_off_with_jitter(
    server: FakeModelServer, make: Make, sleeps: Sleeps, provider: str
) -> None:
    server.fail(status=500, times=2)
    result = await make(provider).complete(group_request())
    assert result.candidates == ("ok",)
    assert len(server.requests) == 3
    assert 0.5 <= sleeps.calls[0] <= 1.0
    assert 1.0 <= sleeps.calls[1] <= 2.0


@pytest.mark.parametrize("kind", ["timeout", "reset", "broken_stream"])
@pytest.mark.parametrize("provider", ["openai", "dashscope"])
@pytest.mark.parametrize("stream", [False, True])
async def test_transient_faults_are_retried(
    server: FakeModelServer,
    make: Make,
    sleeps: Sleeps,
    kind: str,
    provider: str,
    stream: bool,
) -> None:
    server.fail(kind=kind)
    server.reply("recovered")
    result = await make(provider, stream=stream, timeout_s=0.2).complete(group_request())
    assert result.candidates == ("recovered",)
    assert len(server.requests) == 2
    assert len(sleeps.calls) == 1


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_is_retried_once(
    server: FakeModelServer, make: Make, sleeps: Sleeps, provider: str, stream: bool
) -> None:
    server.fail(kind="malformed")
    result = await make(provider, stream=stream).complete(group_request())
    assert result.candidates == ("ok",)
    server.fail(kind="malformed", times=2)
    with pytest.raises(MalformedResponseError, match="not valid JSON"):
        await make(provider, stream=stream).complete(group_request())
    assert len(server.requests) == 4


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_moderation_is_not_retried(
    server: FakeModelServer, make: Make, sleeps: Sleeps, provider: str
) -> None:
    server.fail(kind="moderation")
    with pytest.raises(ModerationError, match=r"(?i)data_?inspection_?failed"):
        await make(provider).complete(group_request())
    assert len(server.requests) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_moderation_inside_a_stream(
    server: FakeModelServer, make: Make, sleeps: Sleeps, provider: str
) -> None:
    server.fail(kind="moderation")
    with pytest.raises(ModerationError, match="Output data may contain inappropriate content"):
        await make(provider, stream=True).complete(group_request())
    assert len(server.requests) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_moderation_400_on_a_streaming_request(
    server: FakeModelServer, make: Make, provider: str
) -> None:
    server.fail(status=400, kind="moderation")
    with pytest.raises(ModerationError):
        await make(provider, stream=True).complete(group_request())


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_key_is_fatal_and_secret_free(
    server: FakeModelServer,
    make: Make,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.fail(status=status, kind="auth")
    with pytest.raises(AuthError) as caught:
        await make(provider).complete(group_request())
    host = server.url.removeprefix("http://")
    assert str(caught.value) == (
        f"the API key was rejected by {host} (HTTP {status}); "
        "check the environment variable named in [llm] api_key_env"
    )
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)
    assert KEY not in caplog.text
    assert len(server.requests) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_retries_exhausted_gives_up(
    server: FakeModelServer,
    make: Make,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.fail(status=503, times=10)
    with pytest.raises(GiveUpError, match="after 3 attempts; last cause: HTTP 503") as caught:
        await make(provider, max_retries=2).complete(group_request())
    assert len(server.requests) == 3
    assert len(sleeps.calls) == 2
    warnings = [r for r in caplog.records if r.name == "salon.backend"]
    assert [r.levelname for r in warnings] == ["WARNING", "WARNING"]
    assert all("HTTP 503" in r.getMessage() for r in warnings)
    assert KEY not in caplog.text
    assert KEY not in str(caught.value)
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]


async def test_other_client_errors_are_not_retried(
    server: FakeModelServer, make: Make, sleeps: Sleeps
) -> None:
    server.fail(status=400)
    with pytest.raises(RequestRejectedError, match="HTTP 400: invalid_parameter_error"):
        await make("openai").complete(group_request())
    assert len(server.requests) == 1
    assert sleeps.calls == []


async def test_refused_connection_gives_up(sleeps: Sleeps) -> None:
    async with FakeModelServer() as gone:
        url = gone.url
    backend = make_backend(
        provider="openai",
        base_url=url + "/v1",
        api_key=KEY,
        model=MODEL,
        prefill="auto",
        max_retries=1,
        sleep=sleeps,
    )
    try:
        with pytest.raises(GiveUpError, match="connection error") as caught:
            await backend.complete(group_request())
    finally:
        await backend.aclose()
    assert KEY not in str(caught.value)
    assert len(sleeps.calls) == 1


async def _unfinished_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "half"}}]}\n\n'
    await response.write(chunk)
    await response.write_eof()
    return response


async def test_stream_ending_cleanly_without_done_is_retried(sleeps: Sleeps) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _unfinished_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    backend = make_backend(
        provider="openai",
        base_url=f"http://{host}:{port}/v1",
        api_key=KEY,
        model=MODEL,
        prefill="auto",
        stream=True,
        max_retries=1,
        sleep=sleeps,
    )
    try:
        with pytest.raises(GiveUpError, match="stream ended before the reply was complete"):
            await backend.complete(group_request())
    finally:
        await backend.aclose()
        await runner.cleanup()
    assert len(sleeps.calls) == 1


def test_make_backend_refuses_unknown_settings() -> None:
    common: dict[str, Any] = {"base_url": "http://127.0.0.1:1/v1", "api_key": None, "model": "m"}
    with pytest.raises(ValueError, match="unknown provider 'anthropic'"):
        make_backend(provider="anthropic", prefill="auto", **common)
    with pytest.raises(ValueError, match="unknown prefill setting"):
        make_backend(provider="openai", prefill="maybe", **common)
    with pytest.raises(ValueError, match="base_url must start with http"):
        make_backend(
            **{**common, "base_url": "localhost:8000/v1"}, provider="openai", prefill="auto"
        )
    with pytest.raises(ValueError, match="max_retries"):
        make_backend(provider="openai", prefill="auto", max_retries=-1, **common)


def test_http_client_loggers_are_quiet() -> None:
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING
