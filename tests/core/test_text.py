"""Reply cleaning and splitting."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from core.text import clean_reply, split_message, utf16_len

OWN = ("Ling Lu", "凌露", "Lu")
OTHERS = ("Cheng Yi", "Tao Le", "Ma Hui")


def test_strips_leading_own_name_with_either_colon() -> None:
    assert clean_reply(" Ling Lu: Hmph.", OWN, OTHERS) == "Hmph."
    assert clean_reply("凌露：哼。", OWN, OTHERS) == "哼。"
    assert clean_reply("**Ling Lu**: fine", OWN, OTHERS) == "fine"
    assert clean_reply("  Alright, tunes then.  ", OWN, OTHERS) == "Alright, tunes then."


def test_cuts_where_the_model_speaks_for_someone_else() -> None:
    raw = "Sure thing.\nCheng Yi: Thanks Lu!\nLing Lu: You're welcome."
    assert clean_reply(raw, OWN, OTHERS) == "Sure thing."
    assert clean_reply("Cheng Yi: I cheated", OWN, OTHERS) == ""
    # an echoed own name in front of someone else's turn hides nothing
    assert clean_reply("Ling Lu: Cheng Yi: I cheated", OWN, OTHERS) == ""
    assert clean_reply("Ling Lu: Ling Lu: fine", OWN, OTHERS) == "fine"
    assert clean_reply("OK\n  tao le：hi", OWN, OTHERS) == "OK"


def test_keeps_colons_that_are_not_speakers() -> None:
    raw = "Plan: meet at 8:30.\nNote: bring the guitar."
    assert clean_reply(raw, OWN, OTHERS) == raw


def test_drops_template_tokens_and_empty_output() -> None:
    assert clean_reply("Fine.<|im_end|>", OWN, OTHERS) == "Fine."
    assert clean_reply("   \n ", OWN, OTHERS) == ""
    assert clean_reply("Ling Lu:", OWN, OTHERS) == ""
    assert "<|im_start|>" not in clean_reply("a <|im_start|>user b", OWN, OTHERS)


def test_split_prefers_paragraphs_then_sentences() -> None:
    text = "First paragraph here.\n\nSecond one is here. It has two sentences."
    assert split_message(text, 40) == [
        "First paragraph here.",
        "Second one is here.",
        "It has two sentences.",
    ]
    assert split_message("short", 2000) == ["short"]


def test_split_counts_utf16_units() -> None:
    text = "😀" * 10
    pieces = split_message(text, 5)
    assert all(utf16_len(p) <= 5 for p in pieces)
    assert "".join(pieces) == text


def test_split_5000_into_three_for_discord() -> None:
    sentence = "This is a sentence of a long story. "
    text = (sentence * 140).strip()
    assert len(text) > 4900
    pieces = split_message(text, 2000)
    assert len(pieces) == 3
    assert all(p.endswith(".") for p in pieces)


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000), st.integers(min_value=1, max_value=300))
def test_split_never_exceeds_the_limit_or_loses_text(text: str, limit: int) -> None:
    pieces = split_message(text, limit)
    for p in pieces:
        assert p
        assert utf16_len(p) <= limit or len(p) == 1
    assert _squash("".join(pieces)) == _squash(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_clean_reply_never_crashes_nor_speaks_for_others(raw: str) -> None:
    out = clean_reply(raw, OWN, OTHERS)
    for line in out.split("\n"):
        assert not re.match(r"\s*(Cheng Yi|Tao Le|Ma Hui)\s*[:：]", line, re.IGNORECASE)
