"""Reply cleaning and message splitting: pure text functions between the model and a platform."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from core.sanitize import (
    canonical_name,
    clean_text,
    neutralize_template_tokens,
    speaker_keys,
    strip_template_tokens,
)

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’」』)）]*\s+|(?<=[。！？])")
_TRAILING_TEMPLATE = re.compile(r"(?:<\|[^|<>]{0,40}\|>|</s>)+\s*$")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts (Discord counts code points: never more)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


_PREFIX = re.compile(r"\s*\**\s*([^:：\n]{1,64}?)\s*\**\s*[:：]\s?")


def _speaker_prefix(line: str) -> str | None:
    m = _PREFIX.match(line)
    return m.group(1) if m else None


def _line_speakers(line: str) -> set[str]:
    """The canonical names a line starts with as `Name:` (template tokens stripped or defanged)."""
    if ":" not in line and "：" not in line:  # no "Name:" without a colon (most lines)
        return set()
    probes = (strip_template_tokens(line), neutralize_template_tokens(line))
    return {canonical_name(s) for s in map(_speaker_prefix, probes) if s is not None}


@functools.lru_cache(maxsize=1024)
def _name_keys(names: tuple[str, ...]) -> frozenset[str]:
    """`speaker_keys` per set of names (a channel's speakers repeat from reply to reply)."""
    return speaker_keys(names)


def clean_reply(raw: str, own_names: Sequence[str], other_names: Iterable[str]) -> str:
    """Turn the model's continuation of `"Name:"` into the text to post ("" = post nothing).

    Strips an echoed own name, cuts where the model starts speaking for someone else, and
    removes trailing chat-template tokens.
    """
    own = _name_keys(tuple(own_names))
    others = _name_keys(tuple(other_names)) - own
    text = clean_text(raw)
    text = _TRAILING_TEMPLATE.sub("", text).strip()
    kept: list[str] = []
    for index, line in enumerate(text.split("\n")):
        keys = _line_speakers(line)
        echo = bool(keys & own)
        # an echoed own name may hide another turn behind it ("Lu: Ann: ..."): look again
        while keys & own and not keys & others:
            echoed = _PREFIX.match(line)
            if echoed is None:
                break
            line = line[echoed.end() :]
            keys = _line_speakers(line)
        if keys & others:
            break
        if echo and index == 0:
            line = line.lstrip()
        kept.append(line)
    return neutralize_template_tokens("\n".join(kept).strip())


def _cut_points(text: str, limit: int) -> int:
    """Index (in code points) of the longest prefix of `text` that fits in `limit` UTF-16 units."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _best_break(window: str) -> int:
    """The position to break `window` at: paragraph, then line, then sentence, then space."""
    floor = len(window) // 3
    for pattern in (r"\n\s*\n", r"\n", None, r"\s"):
        if pattern is None:
            ends = [m.end() for m in _SENTENCE_END.finditer(window)]
        else:
            ends = [m.end() for m in re.finditer(pattern, window)]
        ends = [e for e in ends if floor < e <= len(window)]
        if ends:
            return ends[-1]
    return len(window)


def split_message(text: str, limit: int) -> list[str]:
    """Split `text` into pieces of at most `limit` UTF-16 units on paragraph/sentence bounds.

    Only whitespace at the cut points is dropped; every other character is kept, in order.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        if utf16_len(rest) <= limit:
            pieces.append(rest)
            break
        window = rest[: max(1, _cut_points(rest, limit))]
        cut = _best_break(window) if len(window) > 1 else len(window)
        piece = rest[:cut].rstrip()
        if not piece:
            piece, cut = window, len(window)
        pieces.append(piece)
        rest = rest[cut:].lstrip()
    return pieces
