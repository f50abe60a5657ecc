"""Pure tests of the backend's pieces: retry timing, fault mapping, SSE, response parsing."""

from __future__ import annotations

import random
from typing import Any

import pytest

from core.backends.base import (
    AuthError,
    ChatRequest,
    ChatResult,
    GenerationParams,
    GiveUpError,
    MalformedResponseError,
    ModerationError,
    RequestRejectedError,
)
from core.backends.dashscope import DashScopeWire
from core.backends.faults import fault_from_error_object, fault_from_status, lenient_json
from core.backends.openai import OpenAIWire
from core.backends.retry import (
    RetryPolicy,
    TransientFault,
    backoff_delay,
    parse_retry_after,
    with_retries,
)
from core.backends.sse import SseDecoder, SseEvent
from core.backends.wire import StreamState, param_fields

KEY = "sk-very-secret-0123456789"


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for retry in range(12):
        ceiling = min(30.0, 2.0**retry)
        delay = backoff_delay(retry, rng)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(100, rng) <= 30.0


def test_backoff_jitter_comes_from_the_injected_rng() -> None:
    a = [backoff_delay(3, random.Random(1)) for _ in range(2)]
    b = backoff_delay(3, random.Random(2))
    assert a[0] == a[1]
    assert a[0] != b


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("2", 2.0),
        (" 0.5 ", 0.5),
        ("-3", 0.0),
        ("3600", 60.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_header(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


class _Script:
    """An attempt function failing with the given exceptions, then returning 'done'."""

    def __init__(self, *faults: Exception) -> None:
        self.faults = list(faults)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.faults:
            raise self.faults.pop(0)
        return "done"


async def _run(script: _Script, max_retries: int = 4) -> tuple[str, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    result = await with_retries(
        script,
        policy=RetryPolicy(max_retries=max_retries),
        sleep=sleep,
        rng=random.Random(0),
        where="example.test",
    )
    return result, sleeps


async def test_retries_transient_faults_then_succeeds() -> None:
    script = _Script(TransientFault("HTTP 503"), TransientFault("HTTP 429", retry_after=7.0))
    result, sleeps = await _run(script)
    assert result == "done"
    assert script.calls == 3
    assert 0.5 <= sleeps[0] <= 1.0
    assert sleeps[1] == 7.0


async def test_gives_up_after_max_retries_naming_the_last_cause() -> None:
    script = _Script(*(TransientFault(f"HTTP {500 + i}") for i in range(5)))
    with pytest.raises(GiveUpError, match="after 3 attempts; last cause: HTTP 502"):
        await _run(script, max_retries=2)
    assert script.calls == 3


async def test_malformed_is_retried_once_then_raised() -> None:
    script = _Script(MalformedResponseError("bad 1"), MalformedResponseError("bad 2"))
    with pytest.raises(MalformedResponseError, match="bad 2"):
        await _run(script)
    assert script.calls == 2


async def test_fatal_errors_are_not_retried() -> None:
    script = _Script(AuthError("no"))
    with pytest.raises(AuthError):
        await _run(script)
    assert script.calls == 1


async def test_each_retry_is_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="salon.backend")
    await _run(_Script(TransientFault("HTTP 502")))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "HTTP 502" in caplog.records[0].getMessage()


def test_auth_status_maps_to_auth_error_without_the_key() -> None:
    body = f'{{"error": {{"message": "Incorrect API key provided: {KEY}"}}}}'
    error = fault_from_status(401, body, host="api.example", retry_after=None, secret=KEY)
    assert isinstance(error, AuthError)
    assert str(error) == (
        "the API key was rejected by api.example (HTTP 401); "
        "check the environment variable named in [llm] api_key_env"
    )


def test_server_text_echoing_the_key_is_redacted() -> None:
    body = f'{{"code": "InvalidParameter", "message": "bad header Bearer {KEY}"}}'
    error = fault_from_status(400, body, host="h", retry_after=None, secret=KEY)
    assert isinstance(error, RequestRejectedError)
    assert KEY not in str(error)
    assert "InvalidParameter" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        '{"code": "DataInspectionFailed", "message": "Input data may contain inappropriate"}',
        '{"code": "data_inspection_failed", "message": "x"}',
        '{"error": {"code": "data_inspection_failed", "message": "x", "type": "x"}}',
        'event:error\n:HTTP_STATUS/400\ndata:{"code":"DataInspectionFailed","message":"x"}\n',
    ],
)
def test_moderation_in_either_shape(body: str) -> None:
    error = fault_from_status(400, body, host="h", retry_after=None, secret=None)
    assert isinstance(error, ModerationError)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    fault = fault_from_status(status, "", host="h", retry_after="3", secret=None)
    assert isinstance(fault, TransientFault)
    assert fault.retry_after == 3.0
    assert f"HTTP {status}" in fault.cause


@pytest.mark.parametrize("status", [400, 404, 422])
def test_other_client_errors_are_rejections(status: int) -> None:
    error = fault_from_status(status, "not json", host="h", retry_after=None, secret=None)
    assert isinstance(error, RequestRejectedError)
    assert f"HTTP {status}" in str(error)
    assert ("base_url" in str(error)) == (status == 404)


def test_in_stream_error_objects() -> None:
    moderation = fault_from_error_object("DataInspectionFailed", "x", host="h", secret=None)
    throttled = fault_from_error_object("Throttling.RateQuota", "x", host="h", secret=None)
    other = fault_from_error_object("InvalidParameter", "x", host="h", secret=None)
    assert isinstance(moderation, ModerationError)
    assert isinstance(throttled, TransientFault)
    assert isinstance(other, RequestRejectedError)


def test_lenient_json_reads_plain_and_sse_bodies() -> None:
    assert lenient_json('{"a": 1}') == {"a": 1}
    assert lenient_json('id:1\ndata:{"a": 2}\n\n') == {"a": 2}
    assert lenient_json("<html>") is None


def test_sse_decoder_handles_both_protocols_framing() -> None:
    decoder = SseDecoder()
    lines = [
        'data: {"x": 1}',
        "",
        "id:1",
        "event:result",
        ":HTTP_STATUS/200",
        'data:{"y": 2}',
        "",
        "data: [DONE]",
    ]
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert events == [SseEvent("", '{"x": 1}'), SseEvent("result", '{"y": 2}')]
    assert decoder.flush() == SseEvent("", "[DONE]")
    assert decoder.flush() is None


def test_sse_decoder_joins_multiline_data() -> None:
    decoder = SseDecoder()
    assert decoder.feed("data: a") is None
    assert decoder.feed("data: b") is None
    assert decoder.feed("") == SseEvent("", "a\nb")


def test_param_fields_only_sends_what_is_set() -> None:
    assert param_fields(GenerationParams()) == {}
    params = GenerationParams(
        temperature=0.7, top_p=0.9, seed=42, max_tokens=100, n=3, logit_bias={"7": -100}
    )
    assert param_fields(params) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 42,
        "max_tokens": 100,
        "n": 3,
        "logit_bias": {"7": -100},
    }
    assert param_fields(GenerationParams(temperature=0.0, seed=0)) == {
        "temperature": 0.0,
        "seed": 0,
    }


OPENAI = OpenAIWire("qwen-plus-character", "partial")
DASHSCOPE = DashScopeWire("qwen-plus-character", "partial")


def test_openai_parse_seed_response() -> None:
    payload = {
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "second"}},
            {"index": 0, "message": {"role": "assistant", "content": "first"}},
        ],
        "usage": {
            "prompt_tokens": 130,
            "completion_tokens": 85,
            "prompt_tokens_details": None,
        },
    }
    assert OPENAI.parse(payload) == ChatResult(("first", "second"), 130, 85, 0)


def test_openai_parse_cached_tokens_and_null_content() -> None:
    payload = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None}}],
        "usage": {
            "prompt_tokens": 163,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 160},
        },
    }
    assert OPENAI.parse(payload) == ChatResult(("",), 163, 0, 160)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 163, "output_tokens": 35, "cached_tokens": 160},
        {"input_tokens": 163, "output_tokens": 35, "prompt_tokens_details": {"cached_tokens": 160}},
    ],
)
def test_dashscope_parse_cached_tokens_in_both_places(usage: dict[str, Any]) -> None:
    payload = {
        "output": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]},
        "usage": usage,
    }
    assert DASHSCOPE.parse(payload) == ChatResult(("hi",), 163, 35, 160)


def test_missing_usage_counts_as_zero() -> None:
    payload = {"choices": [{"message": {"content": "x"}}]}
    assert OPENAI.parse(payload) == ChatResult(("x",), 0, 0, 0)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {},
        {"choices": []},
        {"choices": "text"},
        {"choices": [{"message": {"content": ["parts"]}}]},
        {"choices": [{"index": "0", "message": {"content": "x"}}]},
        {"choices": [{"message": "x"}]},
    ],
)
def test_openai_malformed_shapes(payload: Any) -> None:
    with pytest.raises(MalformedResponseError):
        OPENAI.parse(payload)


@pytest.mark.parametrize("payload", [{}, {"output": None}, {"output": {"text": "x"}}])
def test_dashscope_malformed_shapes(payload: Any) -> None:
    with pytest.raises(MalformedResponseError):
        DASHSCOPE.parse(payload)


def test_stream_state_accumulates_per_index_and_knows_when_it_is_complete() -> None:
    state = StreamState()
    OPENAI.feed({"choices": [{"index": 1, "delta": {"role": "assistant"}}]}, state)
    OPENAI.feed({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}, state)
    OPENAI.feed({"choices": [{"index": 1, "delta": {"content": "Bye"}}]}, state)
    OPENAI.feed(
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}, state
    )
    assert not state.complete()
    OPENAI.feed({"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]}, state)
    assert state.complete()
    OPENAI.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}, state)
    assert state.result() == ChatResult(("Hello", "Bye"), 9, 2, 0)


def test_dashscope_stream_null_finish_reason_is_not_finished() -> None:
    state = StreamState()
    chunk: dict[str, Any] = {
        "output": {"choices": [{"index": 0, "message": {"content": "a"}, "finish_reason": "null"}]},
        "usage": {"input_tokens": 5, "output_tokens": 1, "cached_tokens": 4},
    }
    DASHSCOPE.feed(chunk, state)
    assert not state.complete()
    chunk["output"]["choices"][0]["finish_reason"] = "stop"
    DASHSCOPE.feed(chunk, state)
    assert state.complete()
    assert state.result() == ChatResult(("aa",), 5, 1, 4)


def test_empty_stream_is_malformed() -> None:
    state = StreamState()
    state.done = True
    assert state.complete()
    with pytest.raises(MalformedResponseError):
        state.result()


def test_bodies_of_both_protocols() -> None:
    request = ChatRequest(
        messages=({"role": "user", "content": "hi"},),
        params=GenerationParams(seed=1),
        character_options={"profile": "p"},
    )
    assert OPENAI.body(request, stream=True) == {
        "model": "qwen-plus-character",
        "messages": [{"role": "user", "content": "hi"}],
        "seed": 1,
        "character_options": {"profile": "p"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert DASHSCOPE.body(request, stream=True) == {
        "model": "qwen-plus-character",
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "parameters": {
            "result_format": "message",
            "seed": 1,
            "character_options": {"profile": "p"},
            "incremental_output": True,
        },
    }
    assert DASHSCOPE.headers(stream=True)["X-DashScope-SSE"] == "enable"
    assert OPENAI.headers(stream=False) == {}
