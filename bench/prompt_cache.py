"""Benchmark 2: prompt tokens sent and the share the provider's session cache can reuse.

A simulated group conversation runs through the real engine on a virtual clock (messages a
few seconds apart, each decision settled before the next message); the character answers
when addressed and now and then on its own. Every request is recorded with the newest
message it could see. A request's shared prefix is the tokens of its longest leading run of
messages identical to the previous request's for the same session (channel + character),
the final partial "Name:" excluded. The baseline replays the same conversation and request
points through `build_messages` with a one-message sliding window: the oldest message is
dropped whenever the transcript is over the same token budget.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    CHARACTER_KEY,
    BenchResult,
    Figure,
    InstantBackend,
    RecordingSender,
    chat_text,
    humans,
    prompt_tokens,
    write_setup,
)
from core import prompt as P
from core.backends.base import ChatRequest, ChatResult
from core.clock import VirtualClock
from core.config import Character, Settings
from core.engine import Engine
from core.models import input_limit
from core.sqlite_store import SqliteStore
from core.store import StoredMessage
from core.types import Channel, Message

TARGET_SHARE = 0.85
Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class CacheSize:
    messages: int
    input_limit: int = 3_000
    addressed_share: float = 0.1
    talkativeness: float = 0.2
    min_gap_s: float = 3.0
    max_gap_s: float = 20.0


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request and the newest stored message it could see."""

    session: str
    messages: tuple[Mapping[str, Any], ...]
    top_seq: int


@dataclass(frozen=True, slots=True)
class PrefixStats:
    requests: int
    total_tokens: int
    shared_tokens: int

    @property
    def share(self) -> float:
        return self.shared_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def uncached_tokens(self) -> int:
        return self.total_tokens - self.shared_tokens


def _body(messages: Messages) -> Messages:
    """The request without its final partial "Name:" message."""
    if messages and messages[-1].get("partial"):
        return messages[:-1]
    return messages


def shared_prefix(previous: Messages, current: Messages) -> int:
    """Tokens of `current`'s longest leading run identical to `previous` (partials excluded)."""
    tokens = 0
    for old, new in zip(_body(previous), _body(current), strict=False):
        if dict(old) != dict(new):
            break
        tokens += P.estimate_tokens(str(new.get("content", "")))
    return tokens


def prefix_stats(requests: Sequence[tuple[str, Messages]]) -> PrefixStats:
    """Totals over (session, messages) pairs in the order they were sent."""
    last: dict[str, Messages] = {}
    total = shared = 0
    for session, messages in requests:
        total += prompt_tokens(messages)
        if session in last:
            shared += shared_prefix(last[session], messages)
        last[session] = messages
    return PrefixStats(len(requests), total, shared)


class RecordingBackend(InstantBackend):
    """The instant model, also noting the newest message each request could see."""

    def __init__(self, store: SqliteStore, channel: Channel) -> None:
        super().__init__()
        self._store = store
        self._channel = channel
        self.recorded: list[Recorded] = []

    async def complete(self, request: ChatRequest) -> ChatResult:
        last = await self._store.last_message(self._channel)
        self.recorded.append(
            Recorded(request.session_id or "", tuple(request.messages), last.seq if last else 0)
        )
        return await super().complete(request)


def sliding_window(
    settings: Settings,
    character: Character,
    rows: Sequence[StoredMessage],
    recorded: Sequence[Recorded],
) -> list[tuple[str, Messages]]:
    """The baseline requests: same request points, the oldest message dropped while over budget.

    The budget is the engine's: the input limit less the profile and a 64-token margin.
    """
    limit = input_limit(settings.llm.model, settings.llm.input_limit)
    budget = max(256, limit - P.estimate_tokens(character.profile) - 64)
    persona = P.Persona(character.name, character.profile, tuple(character.aliases))
    turns = [
        P.Turn(r.seq, r.author_id, r.author_name, r.text, r.character == character.key, r.character)
        for r in rows
    ]
    sizes = [P.estimate_tokens(t.text) + P.estimate_tokens(t.speaker) for t in turns]
    out: list[tuple[str, Messages]] = []
    start = end = total = 0
    for request in recorded:
        while end < len(turns) and turns[end].seq <= request.top_seq:
            total += sizes[end]
            end += 1
        while total > budget and start < end - 1:
            total -= sizes[start]
            start += 1
        messages = P.build_messages(persona, turns[start:end], direct=False)
        out.append((request.session, messages))
    return out


@dataclass(frozen=True, slots=True)
class Conversation:
    settings: Settings
    character: Character
    recorded: tuple[Recorded, ...]
    rows: tuple[StoredMessage, ...]


async def converse(root: Path, size: CacheSize, seed: int) -> Conversation:
    """Run the conversation through the engine; the requests and the final transcript."""
    settings, character = write_setup(
        root,
        behavior={
            "talkativeness": size.talkativeness,
            "debounce_s": 0.0,
            "replies_per_minute": 0,
            "user_replies_per_minute": 0,
        },
        input_limit=size.input_limit,
    )
    rng = random.Random(seed)
    channel = Channel("bench", "cache")
    people = humans(channel)
    clock = VirtualClock()
    store = SqliteStore(settings.storage_path())
    await store.open()
    backend = RecordingBackend(store, channel)
    engine = Engine(
        settings=settings,
        characters={character.key: character},
        store=store,
        backend=backend,
        clock=clock,
        rng=random.Random(seed),
    )
    sender = RecordingSender(clock)
    try:
        for index in range(size.messages):
            hit = rng.random() < size.addressed_share
            message = Message(
                channel,
                f"m{index}",
                rng.choice(people),
                chat_text(rng),
                clock.now(),
                frozenset({CHARACTER_KEY}) if hit else frozenset(),
            )
            await engine.receive(message, via=character.key, sender=sender)
            await clock.advance(rng.uniform(size.min_gap_s, size.max_gap_s), idle=engine.idle)
        await engine.flush()
        rows = await store.recent(channel, limit=size.messages * 2 + 10)
    finally:
        await engine.aclose()
        await store.close()
    return Conversation(settings, character, tuple(backend.recorded), tuple(rows))


async def run(size: CacheSize, *, seed: int = 2, workdir: Path | None = None) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="salon-bench-cache-", dir=workdir) as tmp:
        talk = await converse(Path(tmp), size, seed)
    engine = prefix_stats([(r.session, r.messages) for r in talk.recorded])
    baseline = prefix_stats(sliding_window(talk.settings, talk.character, talk.rows, talk.recorded))
    figures = (
        Figure(
            "prompt_cache", "shared-prefix share", engine.share * 100, "%",
            "1-message sliding window", baseline.share * 100,
            f">= {TARGET_SHARE:.0%}", engine.share >= TARGET_SHARE,
        ),
        Figure(
            "prompt_cache", "prompt tokens sent", engine.total_tokens, "tok",
            "1-message sliding window", baseline.total_tokens,
        ),
        Figure(
            "prompt_cache", "tokens outside the shared prefix", engine.uncached_tokens, "tok",
            "1-message sliding window", baseline.uncached_tokens,
        ),
    )  # fmt: skip
    details = {
        "messages": float(size.messages),
        "requests": float(engine.requests),
        "answered_share": engine.requests / max(1, size.messages),
        "input_limit": float(size.input_limit),
        "engine_total_tokens": float(engine.total_tokens),
        "engine_shared_tokens": float(engine.shared_tokens),
        "engine_share": engine.share,
        "baseline_total_tokens": float(baseline.total_tokens),
        "baseline_shared_tokens": float(baseline.shared_tokens),
        "baseline_share": baseline.share,
        "avg_prompt_tokens": engine.total_tokens / max(1, engine.requests),
        "baseline_avg_prompt_tokens": baseline.total_tokens / max(1, baseline.requests),
    }
    return BenchResult("prompt_cache", figures, details)
