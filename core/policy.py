"""When a character speaks (DESIGN.md §3): a pure function of state, time and an rng."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from core.lines import ADDRESSED, AUTHOR_ID, CHARACTER, IS_BOT, SEQ, TEXT, Line
from core.sanitize import canonical_name, name_key

NAME_CHANCE = 0.85
PRESENCE_WINDOW = 10
COOLDOWN_FACTOR = 0.5

Mode = Literal["reply", "continue"]


@dataclass(frozen=True, slots=True)
class Knobs:
    talkativeness: float = 0.2
    continue_after_s: float = 90.0
    max_continuations: int = 2
    continue_backoff: float = 2.0
    cooldown_s: float = 30.0


class Candidate(NamedTuple):
    """One character's standing in the channel at decision time (a named tuple: one per message)."""

    key: str
    names: tuple[str, ...]
    knobs: Knobs
    handled_seq: int = 0
    last_spoke_at: float | None = None
    continuations: int = 0
    blocked: str | None = None


class Decision(NamedTuple):
    """Who speaks (if anyone), how, and every character's reason (for /why and the log)."""

    speaker: str | None
    mode: Mode | None
    reason: str
    handled: frozenset[str]
    why: dict[str, str]
    wake_at: float | None = None


def names_in(text: str, names: Sequence[str]) -> bool:
    """Whether any of `names` appears in `text` as a word (case-insensitive, CJK-aware)."""
    as_word, keys, anywhere = _matchers(names if type(names) is tuple else tuple(names))
    folded = canonical_name(text)
    # a name that is not even a substring cannot be a word: skip the regex (most messages)
    for key in keys:
        if key in folded:
            break
    else:
        return False
    if as_word is not None and as_word.search(folded):
        return True
    return any(key in folded for key in anywhere)


@functools.lru_cache(maxsize=256)
def _matchers(
    names: tuple[str, ...],
) -> tuple[re.Pattern[str] | None, tuple[str, ...], tuple[str, ...]]:
    """One pattern for the names as words, every name's key, and the CJK names that count
    anywhere in the text."""
    keys = [k for k in (name_key(n) for n in names) if k]
    words = "|".join(re.escape(k) for k in keys)
    pattern = re.compile(rf"(?<![\w@])(?:{words})(?!\w)") if keys else None
    return pattern, tuple(keys), tuple(k for k in keys if any(ord(ch) >= 0x2E80 for ch in k))


def _after(recent: Sequence[Line], seq: int) -> Sequence[Line]:
    """The messages after `seq` (recent is in seq order and usually handled up to its end)."""
    i = len(recent)
    while i > 0 and recent[i - 1][SEQ] > seq:
        i -= 1
    return recent[i:]


def _loop_guard(recent: Sequence[Line], limit: int) -> bool:
    """Whether the last `limit` messages were all by bots (newest first: usually one look)."""
    if limit <= 0 or len(recent) < limit:
        return False
    for i in range(len(recent) - 1, len(recent) - limit - 1, -1):
        m = recent[i]
        if not (m[IS_BOT] or m[CHARACTER]):
            return False
    return True


def _first_addressed(pending: Sequence[Line], key: str) -> Line | None:
    """Plain loops here and in `_named`: a generator per decision is measurable per message."""
    for m in pending:
        if key in m[ADDRESSED]:
            return m
    return None


def _named(pending: Sequence[Line], names: tuple[str, ...]) -> bool:
    for m in pending:  # noqa: SIM110 (see _first_addressed)
        if names_in(m[TEXT], names):
            return True
    return False


def _continuation_due(c: Candidate) -> float:
    assert c.last_spoke_at is not None
    return c.last_spoke_at + c.knobs.continue_after_s * c.knobs.continue_backoff**c.continuations


def decide(
    recent: Sequence[Line],
    candidates: Sequence[Candidate],
    *,
    direct: bool,
    now: float,
    rng: random.Random,
    loop_limit: int = 3,
) -> Decision:
    """Pick at most one speaker: the addressed first, then named, then by a damped roll.

    Characters with nothing new may continue after their own unanswered message, on a timer
    with backoff. Every character gets a reason, so /why can explain the outcome.
    """
    why: dict[str, str] = {}
    handled: set[str] = set()
    ranked: list[tuple[int, float, str]] = []
    wake: list[float] = []
    looping = _loop_guard(recent, loop_limit)
    last = recent[-1] if recent else None
    for c in candidates if len(candidates) < 2 else sorted(candidates, key=lambda c: c.key):
        pending = [m for m in _after(recent, c.handled_seq) if m[CHARACTER] != c.key]
        if c.blocked:
            why[c.key] = f"silent: {c.blocked}"
            handled.add(c.key)
            continue
        if not pending:
            if last is not None and last[CHARACTER] == c.key and c.last_spoke_at is not None:
                k = c.knobs
                if looping and len({m[AUTHOR_ID] for m in recent[-loop_limit:]}) > 1:
                    why[c.key] = "silent: bots were talking among themselves (loop guard)"
                elif k.max_continuations <= c.continuations:
                    why[c.key] = f"silent: already continued {c.continuations} time(s) unanswered"
                elif not direct and k.talkativeness <= 0:
                    why[c.key] = "silent: talkativeness 0 never continues unprompted"
                else:
                    due = _continuation_due(c)
                    if now >= due:
                        ranked.append((3, 0.0, c.key))
                        why[c.key] = (
                            f"continue: nobody answered for {now - c.last_spoke_at:.0f}s "
                            f"(continuation {c.continuations + 1} of {k.max_continuations})"
                        )
                    else:
                        wake.append(due)
                        why[c.key] = f"waiting: may continue in {due - now:.0f}s if nobody answers"
            else:
                why[c.key] = why.get(c.key, "silent: nothing new")
            continue
        if looping:
            why[c.key] = f"silent: the last {loop_limit} messages were all by bots (loop guard)"
            handled.add(c.key)
            continue
        first_addr = _first_addressed(pending, c.key)
        if direct or first_addr is not None:
            what = "direct chat" if direct and first_addr is None else "addressed"
            ranked.append((0, first_addr[SEQ] if first_addr else pending[0][SEQ], c.key))
            why[c.key] = f"speak: {what}"
            continue
        handled.add(c.key)
        if _named(pending, c.names):
            roll = rng.random()
            if roll < NAME_CHANCE:
                ranked.append((1, roll, c.key))
                why[c.key] = f"speak: named in a message (roll {roll:.2f} < {NAME_CHANCE})"
            else:
                why[c.key] = f"silent: named, but roll {roll:.2f} >= {NAME_CHANCE}"
            continue
        p = _chatter_chance(recent, c, now)
        roll = rng.random()
        if roll < p:
            ranked.append((2, roll, c.key))
            why[c.key] = f"speak: joined in (roll {roll:.2f} < chance {p:.2f})"
        else:
            why[c.key] = f"silent: roll {roll:.2f} >= chance {p:.2f}"
    if not ranked:
        reason = "; ".join([f"{k}: {v}" for k, v in why.items()]) or "nobody here"
        return Decision(None, None, reason, frozenset(handled), why, min(wake) if wake else None)
    ranked.sort()
    tier, _, speaker = ranked[0]
    for t, _, other in ranked[1:]:
        state = "waiting" if t == 0 else "silent"
        why[other] = f"{state}: {speaker} speaks first ({why[other]})"
    mode: Mode = "continue" if tier == 3 else "reply"
    handled.add(speaker)
    handled.update(k for t, _, k in ranked if t in (1, 2) and k != speaker)
    return Decision(speaker, mode, why[speaker], frozenset(handled), why, None)


def _chatter_chance(recent: Sequence[Line], c: Candidate, now: float) -> float:
    """Talkativeness, damped by how much of the recent talk is already ours and by cooldown."""
    t = c.knobs.talkativeness
    if t >= 1.0:
        return 1.0
    if t <= 0.0:
        return 0.0
    window = recent[-PRESENCE_WINDOW:]
    presence = sum(1 for m in window if m[CHARACTER] == c.key) / max(1, len(window))
    p = t * (1.0 - presence)
    if c.last_spoke_at is not None and now - c.last_spoke_at < c.knobs.cooldown_s:
        p *= COOLDOWN_FACTOR
    return max(0.0, min(1.0, p))
