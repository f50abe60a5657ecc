"""Pure tests of the prefill dialect transform and the "auto" dialect choice."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.backends.prefill import Dialect, apply_prefill, resolve_dialect

SYSTEM = {"role": "system", "content": "Ling Lu is a 25-year-old musical genius."}
USER = {"role": "user", "content": "Cheng Yi: Are you guys free tomorrow?"}
PREFILL: dict[str, Any] = {"role": "assistant", "content": "Ling Lu:", "partial": True}
DIALECTS: tuple[Dialect, ...] = ("partial", "prefix", "continue_final_message", "generic", "none")


def test_partial_sends_messages_as_they_are() -> None:
    out = apply_prefill([SYSTEM, USER, PREFILL], "partial")
    assert out.messages == (SYSTEM, USER, PREFILL)
    assert dict(out.extra) == {}


def test_prefix_swaps_partial_for_prefix() -> None:
    out = apply_prefill([SYSTEM, USER, PREFILL], "prefix")
    assert out.messages[-1] == {"role": "assistant", "content": "Ling Lu:", "prefix": True}
    assert out.messages[:-1] == (SYSTEM, USER)
    assert dict(out.extra) == {}


def test_continue_final_message_keeps_trailing_assistant_and_adds_fields() -> None:
    out = apply_prefill([SYSTEM, USER, PREFILL], "continue_final_message")
    assert out.messages[-1] == {"role": "assistant", "content": "Ling Lu:"}
    assert dict(out.extra) == {"continue_final_message": True, "add_generation_prompt": False}


def test_generic_adds_vllm_fields_and_disables_thinking() -> None:
    out = apply_prefill([SYSTEM, USER, PREFILL], "generic")
    assert out.messages[-1] == {"role": "assistant", "content": "Ling Lu:"}
    assert dict(out.extra) == {
        "continue_final_message": True,
        "add_generation_prompt": False,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_none_replaces_prefill_with_a_system_line_naming_the_speaker() -> None:
    out = apply_prefill([SYSTEM, USER, PREFILL], "none", speaker="Ling Lu")
    assert out.messages == (
        SYSTEM,
        USER,
        {
            "role": "system",
            "content": "Reply as Ling Lu with one message, without writing your name.",
        },
    )
    assert dict(out.extra) == {}


@pytest.mark.parametrize("prefill", ["Jiang Rang:", "Jiang Rang：", " Jiang Rang: "])
def test_none_without_speaker_takes_the_name_from_the_prefill(prefill: str) -> None:
    last = {"role": "assistant", "content": prefill, "partial": True}
    out = apply_prefill([SYSTEM, USER, last], "none")
    assert out.messages[-1]["content"] == (
        "Reply as Jiang Rang with one message, without writing your name."
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_request_without_prefill_is_unchanged(dialect: Dialect) -> None:
    out = apply_prefill([SYSTEM, USER], dialect, speaker="Ling Lu")
    assert out.messages == (SYSTEM, USER)
    assert dict(out.extra) == {}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_input_messages_are_not_mutated(dialect: Dialect) -> None:
    messages: list[dict[str, Any]] = [dict(SYSTEM), dict(USER), dict(PREFILL)]
    before = copy.deepcopy(messages)
    apply_prefill(messages, dialect, speaker="Ling Lu")
    assert messages == before


def test_partial_false_is_not_a_prefill() -> None:
    last = {"role": "assistant", "content": "Ling Lu: done", "partial": False}
    out = apply_prefill([SYSTEM, USER, last], "prefix")
    assert out.messages == (SYSTEM, USER, last)


def test_partial_before_the_last_message_is_refused() -> None:
    with pytest.raises(ValueError, match="only the last message"):
        apply_prefill([SYSTEM, PREFILL, USER], "partial")


def test_partial_on_a_user_message_is_refused() -> None:
    with pytest.raises(ValueError, match="assistant"):
        apply_prefill([SYSTEM, {**USER, "partial": True}], "partial")


@pytest.mark.parametrize(
    ("provider", "base_url", "expected"),
    [
        ("dashscope", "https://dashscope.aliyuncs.com/api/v1", "partial"),
        ("openai", "https://dashscope.aliyuncs.com/compatible-mode/v1", "partial"),
        ("openai", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "partial"),
        ("dashscope", "http://127.0.0.1:8000/api/v1", "partial"),
        ("openai", "https://api.deepseek.com/beta", "prefix"),
        ("openai", "http://localhost:8000/v1", "generic"),
        ("openai", "http://127.0.0.1:11434/v1", "generic"),
        ("openai", "http://example.com/deepseek/v1", "generic"),
    ],
)
def test_auto_picks_the_dialect_from_provider_and_host(
    provider: str, base_url: str, expected: str
) -> None:
    assert resolve_dialect("auto", provider=provider, base_url=base_url) == expected


@pytest.mark.parametrize("setting", ["partial", "prefix", "continue_final_message", "none"])
def test_explicit_setting_wins_over_the_host(setting: str) -> None:
    url = "https://dashscope.aliyuncs.com/api/v1"
    assert resolve_dialect(setting, provider="dashscope", base_url=url) == setting


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown prefill setting 'partal'"):
        resolve_dialect("partal", provider="openai", base_url="http://x")


_text = st.text(max_size=20)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": _text}
)


@given(
    history=st.lists(_message, max_size=6),
    name=st.text(min_size=1, max_size=12),
    dialect=st.sampled_from(DIALECTS),
)
def test_only_the_prefill_is_touched(
    history: list[dict[str, Any]], name: str, dialect: Dialect
) -> None:
    prefill = {"role": "assistant", "content": f"{name}:", "partial": True}
    out = apply_prefill([*history, prefill], dialect, speaker=name)
    assert list(out.messages[: len(history)]) == history
    assert len(out.messages) == len(history) + 1
    assert not any(m.get("partial") for m in out.messages) or dialect == "partial"
