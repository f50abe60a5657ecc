"""A stored message in the compact form turns and prompts read: a plain tuple of plain values.

Busy channels keep hundreds of thousands of these in memory. Plain tuples of strings and
numbers are dropped from the cyclic collector's lists, so a large cache adds no pause to
its full collections (dataclass instances would be scanned every time, ~100 ms per 100,000).
"""

from __future__ import annotations

from typing import Final

from core.prompt import estimate_tokens
from core.store import StoredMessage

Line = tuple[int, str, str, str, bool, "str | None", str, tuple[str, ...], int]
"""(seq, msg_id, author_id, author_name, author_is_bot, character, text, addressed, tokens).

`tokens` is the estimate of the text and the speaker's name, made once rather than for
every prompt the message appears in.
"""

SEQ: Final = 0
MSG_ID: Final = 1
AUTHOR_ID: Final = 2
AUTHOR_NAME: Final = 3
IS_BOT: Final = 4
CHARACTER: Final = 5
TEXT: Final = 6
ADDRESSED: Final = 7
TOKENS: Final = 8


def line(record: StoredMessage) -> Line:
    """The line of a stored record (the addressed keys sorted, as a tuple)."""
    return (
        record.seq,
        record.msg_id,
        record.author_id,
        record.author_name,
        record.author_is_bot,
        record.character,
        record.text,
        tuple(sorted(record.addressed)),
        estimate_tokens(record.text) + estimate_tokens(record.author_name),
    )


def make_line(
    seq: int,
    author_id: str,
    character: str | None = None,
    is_bot: bool = False,
    text: str = "",
    addressed: frozenset[str] | tuple[str, ...] = (),
    *,
    msg_id: str | None = None,
    author_name: str | None = None,
) -> Line:
    """A line from its parts (tests and callers without a store record)."""
    name = author_name if author_name is not None else author_id
    return (
        seq,
        msg_id if msg_id is not None else f"m{seq}",
        author_id,
        name,
        is_bot,
        character,
        text,
        tuple(sorted(addressed)),
        estimate_tokens(text) + estimate_tokens(name),
    )
