"""Model faults: a scripted 500-message group conversation while the model misbehaves every way.

Engine + SQLite file + real HTTP backend against the fake model server, on a virtual clock.
Two characters with talkativeness 0, so only addressed messages make them speak: every
addressed (message, character) pair must end in exactly one reply, posted before the next
message arrives, or exactly one logged give-up; the store must agree with what was posted.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from core.clock import VirtualClock
from core.config import Character, Settings, load_settings
from core.engine import Engine, build_engine
from core.types import Channel, Message, Participant
from tests.conftest import character_file, write_config
from tests.fakes.model_server import FakeModelServer
from tests.fakes.recording import Posted, RecordingSender, tapped

Outcome = Literal["reply", "gave up", "moderation", "empty"]
Fault = tuple[int | None, str | None, float | None]  # status, kind, Retry-After

QUIET = """
[behavior]
talkativeness = 0.0
debounce_s = 1.0
cooldown_s = 0
replies_per_minute = 0
user_replies_per_minute = 0
"""
HUMANS = [("u-ann", "Ann"), ("u-bo", "Bo"), ("u-cy", "Cy"), ("u-dee", "Dee")]
CHATTER = [
    "anyone up for practice tonight?",
    "the new song needs a bridge",
    "lol",
    "I left my capo at the studio",
    "who booked the room?",
    "brb",
    "that riff was fire",
    "ok",
]
TIMEOUT_S = 0.5
TURN_S = 90.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What the model server does to one character's reply, and what must come of it."""

    name: str
    faults: tuple[Fault, ...]
    outcome: Outcome
    attempts: int


OK = Plan("ok", (), "reply", 1)
PLANS = [
    OK,
    Plan("429 with Retry-After", ((429, None, 3.0),), "reply", 2),
    Plan("500", ((500, None, None),), "reply", 2),
    Plan("503 then 429", ((503, None, None), (429, None, 1.0)), "reply", 3),
    Plan("500 x3", ((500, None, None),) * 3, "gave up", 3),
    Plan("timeout", ((None, "timeout", None),), "reply", 2),
    Plan("reset", ((None, "reset", None),), "reply", 2),
    Plan("reset x3", ((None, "reset", None),) * 3, "gave up", 3),
    Plan("malformed", ((None, "malformed", None),), "reply", 2),
    Plan("malformed x2", ((None, "malformed", None),) * 2, "gave up", 2),
    Plan("moderation", ((None, "moderation", None),), "moderation", 1),
    Plan("broken stream", ((None, "broken_stream", None),), "reply", 2),
    Plan("broken stream x3", ((None, "broken_stream", None),) * 3, "gave up", 3),
    Plan("speaks for another", (), "empty", 1),
]
RARE = {"timeout": 3}  # real-time faults: keep their count (and the wall time) small
TIMEOUT_X3 = Plan("timeout x3", ((None, "timeout", None),) * 3, "gave up", 3)


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    author: tuple[str, str]
    text: str
    addressed: tuple[str, ...]
    plans: tuple[Plan, ...]
    gap: float


def script(seed: int, count: int = 500) -> list[Step]:
    """The conversation: chatter, messages for one or both characters, a fault plan per reply."""
    rng = random.Random(seed)
    deck: list[Plan] = []
    used: Counter[str] = Counter()
    steps: list[Step] = []

    def draw(first_of_two: bool = False) -> Plan:
        nonlocal deck
        while True:
            if not deck:
                deck = [*PLANS, OK, OK, OK, OK]
                rng.shuffle(deck)
            plan = deck.pop()
            if first_of_two and plan.outcome == "empty":
                continue  # its queued reply would be taken by whoever asks first
            limit = RARE.get(plan.name)
            if limit is not None and used[plan.name] >= limit:
                continue
            used[plan.name] += 1
            return TIMEOUT_X3 if limit is not None and used[plan.name] == limit else plan

    for i in range(count):
        roll = rng.random()
        addressed: tuple[str, ...] = ()
        if roll < 0.1:
            addressed = ("lu",)
        elif roll < 0.2:
            addressed = ("su",)
        elif roll < 0.25:
            addressed = ("lu", "su")
        plans = [
            draw(first_of_two=len(addressed) == 2) if n == 0 else draw()
            for n in range(len(addressed))
        ]
        mention = " ".join(f"@{k}" for k in addressed)
        text = f"m{i} {mention} {rng.choice(CHATTER)}".replace("  ", " ")
        gap = TURN_S if addressed else rng.choice([0.2, 0.5, 3.0])
        steps.append(Step(i, rng.choice(HUMANS), text, addressed, tuple(plans), gap))
    return steps


def settings_for(tmp_path: Path, model: FakeModelServer, provider: str, stream: bool) -> Settings:
    write_config(tmp_path, model, provider=provider)
    return load_settings(
        tmp_path / "config.toml",
        env={
            "SALON_TEST_KEY": "sk-test-not-a-real-key",
            "SALON_LLM__TIMEOUT_S": str(TIMEOUT_S),
            "SALON_LLM__STREAM": "true" if stream else "false",
            "SALON_SALON__HISTORY_MESSAGES": "60",
        },
    )


def characters(tmp_path: Path) -> list[Character]:
    return [
        character_file(tmp_path, "lu", f'name = "Ling Lu"\nprofile = "You are Ling Lu."\n{QUIET}'),
        character_file(tmp_path, "su", f'name = "Su Wan"\nprofile = "You are Su Wan."\n{QUIET}'),
    ]


def queue(model: FakeModelServer, plan: Plan, other: str) -> None:
    for status, kind, retry_after in plan.faults:
        model.fail(status, kind=kind, retry_after=retry_after)
    if plan.outcome == "empty":
        model.reply(f"{other}: I will answer that for you.")


async def play(
    engine: Engine, clock: VirtualClock, model: FakeModelServer, steps: list[Step]
) -> list[Posted]:
    posted: list[Posted] = []
    senders = {k: RecordingSender(k, clock.now, log=posted) for k in engine.characters}
    channel = Channel("test", "band")
    other = {"lu": engine.characters["su"].name, "su": engine.characters["lu"].name}
    # the server's fault queue is shared: the second character's plan goes in behind the
    # first one's faults when the first fails on them, else once the first has posted
    later: dict[str, tuple[str, Plan]] = {}

    def arm_next(done: Posted) -> None:
        key, plan = later.pop(done.out.reply_to or "", ("", OK))
        if key:
            queue(model, plan, other=other[key])

    for key, sender in senders.items():
        sender.on_send = arm_next
        # be present before the first message (a newcomer skips what was said before it came)
        await engine.command(channel, "help", via=key, sender=sender)
    for step in steps:
        for sender in senders.values():
            sender.step = step.index
        msg_id = f"in-{step.index}"
        if step.addressed:
            queue(model, step.plans[0], other=other[step.addressed[0]])
        if len(step.addressed) == 2 and step.plans[0].outcome == "reply":
            later[msg_id] = (step.addressed[1], step.plans[1])
        elif len(step.addressed) == 2:
            queue(model, step.plans[1], other=other[step.addressed[1]])
        uid, name = step.author
        message = Message(
            channel,
            msg_id,
            Participant(uid, name),
            step.text,
            clock.now(),
            frozenset(step.addressed),
        )
        for key in sorted(senders):
            await engine.receive(message, via=key, sender=senders[key])
        await clock.advance(step.gap, idle=engine.idle)
    await engine.flush()
    await clock.advance(TURN_S, idle=engine.idle)
    return posted


@pytest.mark.parametrize(
    ("provider", "stream"),
    [("openai", False), ("dashscope", True)],
    ids=["openai-plain", "dashscope-stream"],
)
async def test_500_messages_under_every_fault(
    model: FakeModelServer, tmp_path: Path, provider: str, stream: bool
) -> None:
    steps = script(seed=5)
    settings = settings_for(tmp_path, model, provider, stream)
    counter = iter(range(1, 10**6))
    model.replier = lambda body: f"reply {next(counter)}"
    clock = VirtualClock()
    with tapped(logging.INFO) as tap:
        async with build_engine(
            settings, characters(tmp_path), clock=clock, rng=random.Random(3)
        ) as engine:
            posted = await play(engine, clock, model, steps)
            assert engine.fatal is None
            await check_store(engine, steps, posted)

    pairs = [(s, k, p) for s in steps for k, p in zip(s.addressed, s.plans, strict=True)]
    tried = {p.name for _, _, p in pairs}
    assert tried >= {p.name for p in PLANS} | {TIMEOUT_X3.name}, "every fault kind was injected"

    # exactly one reply per pair that should succeed, posted as a reply before the next message
    expected = {(f"in-{s.index}", k): s.index for s, k, p in pairs if p.outcome == "reply"}
    got = Counter((p.out.reply_to, p.key) for p in posted)
    assert all(n == 1 for n in got.values()), "no duplicate reply"
    assert set(got) == set(expected)
    assert all(p.step == expected[(p.out.reply_to or "", p.key)] for p in posted)
    assert len({p.out.text for p in posted}) == len(posted)

    # exactly one logged give-up per pair that should fail, nothing worse than a warning
    engine_warnings = tap.lines("salon.engine", logging.WARNING)
    outcomes = Counter(p.outcome for _, _, p in pairs)
    assert len([w for w in engine_warnings if "gave up" in w]) == outcomes["gave up"]
    assert len([w for w in engine_warnings if "moderation" in w]) == outcomes["moderation"]
    assert len([w for w in engine_warnings if "empty after cleaning" in w]) == outcomes["empty"]
    assert len(engine_warnings) == outcomes["gave up"] + outcomes["moderation"] + outcomes["empty"]
    assert tap.lines(level=logging.ERROR) == []

    # no extra generations: the server saw exactly the attempts the plans call for
    assert len(model.requests) == sum(p.attempts for _, _, p in pairs)


async def check_store(engine: Engine, steps: list[Step], posted: list[Posted]) -> None:
    """The history holds every human message untouched and every posted piece exactly once."""
    channel = Channel("test", "band")
    await engine.flush_state()  # silent decisions are persisted lazily
    rows = await engine.store.recent(channel, limit=100_000)
    humans = [r for r in rows if r.character is None]
    assert [(r.msg_id, r.text, r.author_name) for r in humans] == [
        (f"in-{s.index}", s.text, s.author[1]) for s in steps
    ]
    assert [r.addressed for r in humans] == [frozenset(s.addressed) for s in steps]
    own = [r for r in rows if r.character is not None]
    assert [(r.msg_id, r.character, r.text) for r in own] == [
        (p.id, p.key, p.out.text) for p in posted
    ]
    last_seq = rows[-1].seq
    for key in engine.characters:
        state = await engine.store.get_state(channel, key)
        handled = int(state["handled_seq"])
        assert handled <= last_seq
        assert all(r.seq <= handled for r in rows if r.character != key), f"{key} owes an answer"
        mine = [p.id for p in posted if p.key == key]
        assert state.get("last_posted") == mine[-1:]
        replies = len(mine)
        empties = sum(
            1
            for s in steps
            for k, p in zip(s.addressed, s.plans, strict=True)
            if k == key and p.outcome == "empty"
        )
        usage = await engine.store.usage(character=key)
        assert usage.requests == replies + empties  # failed requests cost nothing
        assert usage.prompt_tokens > 0


async def test_second_addressed_character_is_not_stranded_by_a_failed_first(
    model: FakeModelServer, tmp_path: Path
) -> None:
    """Both characters addressed; the first one's reply fails: the second still answers now,
    not when the next message happens to arrive."""
    settings = settings_for(tmp_path, model, "openai", False)
    model.replier = lambda body: "here"
    clock = VirtualClock()
    async with build_engine(
        settings, characters(tmp_path), clock=clock, rng=random.Random(3)
    ) as engine:
        steps = [Step(0, HUMANS[0], "m0 @lu @su soundcheck?", ("lu", "su"), (PLANS[4], OK), TURN_S)]
        posted = await play(engine, clock, model, steps)
    assert [(p.key, p.out.reply_to, p.step) for p in posted] == [("su", "in-0", 0)]
