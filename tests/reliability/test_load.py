"""Load: 200 channels x 50 messages at once, a slow model, and `[llm] max_concurrency = 4`.

The fake model holds the first requests until every channel's turn is queued for a model slot
(a turn shows typing right before it queues), so the order in which the rest reach the model
shows the engine's priorities deterministically: addressed before chatter.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.clock import VirtualClock
from core.config import Character, load_settings
from core.engine import POLICY_WINDOW, build_engine
from core.types import Channel, Message, Participant
from tests.adapters.test_console_golden import run, variant
from tests.adapters.test_discord import until
from tests.conftest import character_file, write_config
from tests.fakes.instrumented_model import InstrumentedModelServer
from tests.fakes.recording import Posted, RecordingSender

CHANNELS = 200
MESSAGES = 50
ADDRESSED_CHANNELS = 50
LIMIT = 4
LOUD = """
[behavior]
talkativeness = 1.0
debounce_s = 1.0
cooldown_s = 0
replies_per_minute = 0
user_replies_per_minute = 0
"""
SILENT = "[behavior]\ntalkativeness = 0.0\n"


@pytest.fixture
async def slow_model() -> AsyncIterator[InstrumentedModelServer]:
    server = InstrumentedModelServer()
    async with server:
        yield server


def channel_of(body: dict[str, Any]) -> str:
    """The channel a request is for: every message text starts with its channel's tag."""
    messages = body.get("messages") or []
    last_user = next(m for m in reversed(messages) if m["role"] == "user")
    return str(last_user["content"]).split(": ", 1)[1].split(" ", 1)[0]


async def test_200_channels_x_50_messages_with_4_model_slots(
    slow_model: InstrumentedModelServer, tmp_path: Path
) -> None:
    write_config(tmp_path, slow_model)
    settings = load_settings(
        tmp_path / "config.toml",
        env={
            "SALON_TEST_KEY": "k",
            "SALON_LLM__MAX_CONCURRENCY": str(LIMIT),
            "SALON_LLM__TIMEOUT_S": "60",
        },
    )
    lu = character_file(tmp_path, "lu", f'name = "Ling Lu"\nprofile = "P"\n{LOUD}')
    rng = random.Random(11)
    tags = [f"c{i:03d}" for i in range(CHANNELS)]
    addressed_at = {t: rng.randrange(MESSAGES) for t in rng.sample(tags, ADDRESSED_CHANNELS)}
    slow_model.replier = lambda body: f"sure, {channel_of(body)}"
    clock = VirtualClock()
    posted: list[Posted] = []
    async with build_engine(settings, [lu], clock=clock, rng=random.Random(2)) as engine:
        sender = RecordingSender("lu", clock.now, log=posted)
        people = [Participant(f"u{i}", f"Person {i}") for i in range(7)]
        for n in range(MESSAGES):  # interleaved: every channel is busy at once
            for tag in tags:
                hit = addressed_at.get(tag) == n
                message = Message(
                    Channel("load", tag), f"{tag}-{n}", people[(n + len(tag)) % 7],
                    f"{tag} message {n}" + (" @lu are you there?" if hit else ""),
                    clock.now(), frozenset({"lu"}) if hit else frozenset(),
                )  # fmt: skip
                await engine.receive(message, via="lu", sender=sender)
        slow_model.hold()
        await clock.advance(2.0)  # every channel's debounce fires: 200 turns at once
        await until(lambda: len({c.id for c in sender.typing_seen}) == CHANNELS, 30)
        await until(lambda: len(slow_model.arrivals) == LIMIT, 30)
        slow_model.delay = 0.05
        slow_model.release()
        await until(lambda: len(posted) == CHANNELS, 30)
        await engine.idle()

    assert slow_model.peak == LIMIT, "never more model requests in flight than max_concurrency"
    order = [channel_of(body) for body in slow_model.arrivals]
    assert sorted(order) == tags, "one request per channel: each burst is answered once"
    queued = order[LIMIT:]  # the first ones took free slots before anything was waiting
    urgent = [t in addressed_at for t in queued]
    assert urgent == sorted(urgent, reverse=True), "addressed requests went before chatter"
    replies = Counter(p.out.channel.id for p in posted)
    assert set(replies) == set(tags) and set(replies.values()) == {1}
    answered = {p.out.channel.id: p.out.reply_to for p in posted}
    assert {t: answered[t] for t in addressed_at} == {
        t: f"{t}-{n}" for t, n in addressed_at.items()
    }


async def test_first_message_of_a_new_channel_reaches_every_character(
    model: Any, settings_for: Any, tmp_path: Path
) -> None:
    """Two characters arrive with the channel's first message, which addresses the second."""
    settings = settings_for(model)
    chars: list[Character] = [
        variant(tmp_path, "lu", name="Ling Lu", profile="P", extra=f"aliases = ['Lu']\n{SILENT}"),
        variant(tmp_path, "su", name="Su Wan", profile="P", extra=f"aliases = ['Su']\n{SILENT}"),
    ]
    model.replier = lambda body: "I'm here."
    code, out, err = await run(settings, chars, ["Ann: @Su are you there?", "/wait 5"])
    assert code == 0, err
    assert out.splitlines() == ["Su Wan: I'm here."]


async def test_a_mention_older_than_the_policy_window_is_still_answered(
    model: Any, settings_for: Any, tmp_path: Path
) -> None:
    """A burst (or a backlog after downtime) longer than the decision window hides no mention."""
    settings = settings_for(model)
    quiet = variant(
        tmp_path, "lu", name="Ling Lu", profile="P", extra=f"aliases = ['Lu']\n{SILENT}"
    )
    model.replier = lambda body: "Yes?"
    burst = ["Ann: @Lu can you help me with the chorus?"]
    burst += [f"Bo: unrelated chatter {i}" for i in range(POLICY_WINDOW)]
    code, out, err = await run(settings, [quiet], [*burst, "/wait 5"])
    assert code == 0, err
    assert out.splitlines() == ["Ling Lu: Yes?"]
