"""Building the Qwen group-chat request from one character's point of view (DESIGN.md §1)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from core.chunked import Chunked
from core.sanitize import neutralize_content, speaker_keys, unique_names

Msg = dict[str, Any]
_WIDE = re.compile("[\u2e80-\U0010ffff]")
TURN_OVERHEAD = 250  # bytes a remembered turn costs besides its text (tuple, key, slot; measured)


@dataclass(frozen=True, slots=True)
class Persona:
    """What the prompt needs to know about the character it speaks for."""

    name: str
    profile: str
    aliases: tuple[str, ...] = ()


class Turn(NamedTuple):
    """One transcript entry: `speaker_id` is a stable identity, `speaker` the raw display name.

    A named tuple: a prompt makes hundreds of these, and a tuple is three times cheaper to build.
    """

    seq: int
    speaker_id: str
    speaker: str
    text: str
    own: bool
    character: str | None = None


def partial(name: str) -> Msg:
    """The final "now speak" message: the model continues after `"Name:"`."""
    return {"role": "assistant", "content": f"{name}:", "partial": True}


class Rendered:
    """The turns one (channel, character) prompt was last built from, for the next to reuse.

    Consecutive prompts repeat almost all their turns; a turn is rendered again only when its
    text changed or the speakers' names did (a newcomer can change how others are quoted).
    When the caller knows only turns were added (`extend_messages`), nothing old is looked at.
    """

    __slots__ = (
        "chars",
        "estimate",
        "index",
        "key",
        "known",
        "last_own",
        "names",
        "rendered",
        "source",
        "tokens",
    )

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.names: dict[str, str] = {}
        self.known: frozenset[str] = frozenset()
        # seq -> position in `rendered`: ints, and sealed tuples of strings and ints,
        # none of which the garbage collector has to visit
        self.index: dict[int, int] = {}
        # (text, role, content, tokens) per turn; extended in place, so a reply adds only its
        # new turns, not a fresh tuple of every turn, to what young collections walk
        self.rendered: Chunked[tuple[str, str, str, int]] = Chunked()
        self.last_own = -1  # position of the character's own last turn in `rendered`
        self.chars = 0  # characters of turn text in `rendered`
        self.tokens = 0  # estimate_tokens summed over the turns in `rendered`
        self.estimate = 0  # estimate_tokens summed over the contents of the last array built
        self.source: tuple[Any, ...] | None = None  # what the caller built it from, for its checks

    def settle(
        self,
        key: tuple[Any, ...],
        names: dict[str, str],
        known: frozenset[str],
        index: dict[int, int],
        rendered: list[tuple[str, str, str, int]],
        last_own: int,
        chars: int,
        tokens: int,
    ) -> None:
        self.key, self.names, self.known = key, names, known
        self.index, self.rendered = index, Chunked(rendered)
        self.last_own, self.chars, self.tokens = last_own, chars, tokens

    @property
    def size(self) -> int:
        """Roughly the bytes it holds."""
        return 2 * self.chars + TURN_OVERHEAD * len(self.rendered)


def build_messages(
    persona: Persona,
    turns: Sequence[Turn],
    *,
    direct: bool,
    supplements: Sequence[str] = (),
    reserved_names: Sequence[str] = (),
    include_system: bool = True,
    memo: Rendered | None = None,
) -> list[Msg]:
    """The messages array for one request.

    Group: everyone else is `user` with a `"Name: "` prefix, the character is `assistant` with
    its own prefix, and the request ends with the partial `"Name:"`. Direct: plain contents; a
    reply to the human ends with the human's message, a continuation ends with the partial.
    Supplements go just before the oldest unanswered message, never at the front. With `memo`,
    unchanged turns reuse what the previous call rendered (strings only: the collector never
    has to scan a remembered prompt).
    """
    turns = [t for t in turns if t.text.strip()]
    own_names = (persona.name, *persona.aliases)
    speakers: dict[str, tuple[str, bool]] = {}
    for t in turns:
        if not t.own and t.speaker_id not in speakers:
            speakers[t.speaker_id] = (t.speaker, t.character is not None)
    key = (own_names, tuple(reserved_names), direct, speakers)
    if memo is not None and memo.key == key:
        names, known = memo.names, memo.known
        index, before = memo.index, memo.rendered.since(0)
    else:
        names = unique_names(
            ((i, name, bot) for i, (name, bot) in speakers.items()),
            reserved=(*own_names, *reserved_names),
        )
        known = speaker_keys((*own_names, *reserved_names, *names.values()))
        index, before = {}, []
    new_index: dict[int, int] = {}
    rendered: list[tuple[str, str, str, int]] = []
    body: list[Msg] = []
    chars = tokens = 0
    last_own = -1
    for turn in turns:
        at = index.get(turn.seq)
        hit = before[at] if at is not None else None
        if hit is not None and hit[0] == turn.text:
            role, text = hit[1], hit[2]
        else:
            hit = _render(persona, turn, names, known, direct)
            role, text = hit[1], hit[2]
        new_index[turn.seq] = len(rendered)
        rendered.append(hit)
        if turn.own:
            last_own = len(body)
        body.append({"role": role, "content": text})
        chars += len(turn.text)
        tokens += hit[3]
    if memo is not None:
        memo.settle(key, names, known, new_index, rendered, last_own, chars, tokens)
    return _assemble(persona, body, last_own, direct, supplements, include_system, memo)


def extend_messages(
    persona: Persona,
    new_turns: Sequence[Turn],
    *,
    direct: bool,
    supplements: Sequence[str] = (),
    reserved_names: Sequence[str] = (),
    include_system: bool = True,
    memo: Rendered,
) -> list[Msg] | None:
    """`build_messages` for the memo's turns followed by `new_turns`, rendering only the new.

    The caller vouches that the memo's turns are unchanged. None when the memo cannot say
    (built for other names or mode, or a new speaker, whose name may change others').
    """
    key = memo.key
    if key is None or key[0] != (persona.name, *persona.aliases):
        return None
    if key[1] != tuple(reserved_names) or key[2] != direct:
        return None
    speakers = key[3]
    new = [t for t in new_turns if t.text.strip()]
    if any(not t.own and t.speaker_id not in speakers for t in new):
        return None
    names, known = memo.names, memo.known
    index = memo.index
    rendered = memo.rendered
    chars, tokens, last_own = memo.chars, memo.tokens, memo.last_own
    for turn in new:
        hit = _render(persona, turn, names, known, direct)
        index[turn.seq] = len(rendered)
        if turn.own:
            last_own = len(rendered)
        rendered.append(hit)
        chars += len(turn.text)
        tokens += hit[3]
    # kept as tuples of strings: a tuple of dicts is never untracked, and a thousand remembered
    # prompts of dicts made each full collection visit every turn (10-20 ms, measured)
    body = [{"role": r[1], "content": r[2]} for r in rendered.since(0)]
    memo.chars, memo.tokens, memo.last_own = chars, tokens, last_own
    return _assemble(persona, body, last_own, direct, supplements, include_system, memo)


def _render(
    persona: Persona, turn: Turn, names: dict[str, str], known: frozenset[str], direct: bool
) -> tuple[str, str, str, int]:
    """(text, role, content, tokens) of one turn."""
    content = neutralize_content(turn.text, known)
    if turn.own:
        role, text = "assistant", content if direct else f"{persona.name}: {content}"
    else:
        role, text = "user", content if direct else f"{names[turn.speaker_id]}: {content}"
    return turn.text, role, text, estimate_tokens(text)


def _assemble(
    persona: Persona,
    body: list[Msg],
    last_own: int,
    direct: bool,
    supplements: Sequence[str],
    include_system: bool,
    memo: Rendered | None,
) -> list[Msg]:
    """Profile, turns with the notes before the oldest unanswered one, then the partial.

    Everything after the character's own last turn (`last_own`, -1: none) is unanswered; a
    group prompt always ends with the partial, a direct one only after the character's turn.
    """
    anchor = last_own + 1 if last_own + 1 < len(body) else None
    ends_partial = not direct or not body or last_own == len(body) - 1
    notes = [{"role": "system", "content": s} for s in supplements if s.strip()]
    messages: list[Msg] = [{"role": "system", "content": persona.profile}] if include_system else []
    if anchor is None:
        messages.extend(body)
        messages.extend(notes)
    else:
        messages.extend(body[:anchor])
        messages.extend(notes)
        messages.extend(body[anchor:])
    if ends_partial:
        messages.append(partial(persona.name))
    if memo is not None:
        extra = list(notes)  # what is not a turn: the notes, the profile, the partial
        if include_system:
            extra.append(messages[0])
        if ends_partial:
            extra.append(messages[-1])
        memo.estimate = memo.tokens + sum(estimate_tokens(str(m["content"])) for m in extra)
    return messages


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: CJK characters ~1 token each, other text ~4 characters a token."""
    if text.isascii():
        return (len(text) + 3) // 4 + 4
    wide = len(_WIDE.findall(text))
    return wide + (len(text) - wide + 3) // 4 + 4


def choose_window(
    sized: Sequence[tuple[int, int]], start_seq: int, budget: int, keep: float = 0.5
) -> int:
    """Where the transcript starts: keep `start_seq` while it fits, else drop a whole block.

    `sized` is (seq, tokens) oldest first. Dropping to `keep` of the budget at once means the
    following requests share one prefix (a one-message sliding window would change it each time).
    """
    inside = [(seq, tok) for seq, tok in sized if seq >= start_seq]
    if sum(tok for _, tok in inside) <= budget:
        return start_seq
    total = 0
    new_start = inside[-1][0] if inside else start_seq
    for seq, tok in reversed(inside):
        if total + tok > budget * keep:
            break
        total += tok
        new_start = seq
    return new_start
