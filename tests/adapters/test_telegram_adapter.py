"""The Telegram adapter over real python-telegram-bot and the fake Bot API, with a recording engine.

Covers what the adapter itself owns: start-up, nothing-lost polling, commands and admin rights,
the sender's flood control and RetryAfter, and keeping the token out of logs and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from telegram import Bot
from telegram.error import RetryAfter

from adapters.telegram import TelegramAdapter, redact
from adapters.telegram_sender import TelegramSender
from core.config import Character, TelegramEntry
from core.errors import StartupError
from core.types import Channel, CommandResult, Edit, Message, Outgoing, Sent
from tests.fakes.fake_time import FakeTime
from tests.fakes.telegram_api import FakeBot, FakeTelegramServer

TOKEN = "123456:AAE-secret-token-value-xyz"


class RecordingEngine:
    """The engine surface the adapter uses, recording every call."""

    def __init__(self, character: Character) -> None:
        self.characters = {character.key: character}
        self.identities: dict[tuple[str, str], str] = {}
        self.entered: list[Any] = []
        self.events: list[tuple[Any, str]] = []
        self.commands: list[tuple[Channel, str, str, Any]] = []
        self.opened: list[Channel] = []
        self.resumed: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.command_gate: asyncio.Event | None = None
        self.fail_times = 0
        self.command_text = "done"

    def register_identity(self, platform: str, user_id: str, character: str) -> None:
        self.identities[(platform, user_id)] = character

    def character_for(self, platform: str, user_id: str) -> str | None:
        return self.identities.get((platform, user_id))

    async def receive(self, event: Any, *, via: str, sender: Any) -> None:
        self.entered.append(event)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("store unavailable")
        if self.gate is not None:
            await self.gate.wait()
        self.events.append((event, via))

    async def open_direct(self, channel: Channel, *, via: str, sender: Any) -> None:
        self.opened.append(channel)
        await sender.send(Outgoing(channel, "Hello there."))

    async def command(
        self,
        channel: Channel,
        name: str,
        args: str = "",
        *,
        via: str,
        sender: Any,
        user: Any = None,
    ) -> CommandResult:
        self.commands.append((channel, name, args, user))
        if self.command_gate is not None:
            await self.command_gate.wait()
        return CommandResult(self.command_text)

    async def resume(self, platform: str, *, via: str, sender: Any) -> int:
        self.resumed.append((platform, via))
        return 0


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server


def entry(server: FakeTelegramServer, **kw: Any) -> TelegramEntry:
    return TelegramEntry(bot="ling_lu", token_env="TG_TOKEN_TEST", base_url=server.url, **kw)


def make(
    server: FakeTelegramServer, engine: RecordingEngine, clock: FakeTime, **kw: Any
) -> TelegramAdapter:
    character = next(iter(engine.characters.values()))
    return TelegramAdapter(
        entry(server, **kw),
        character,
        engine,  # type: ignore[arg-type]
        token=TOKEN,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        poll_timeout=5,
    )


@contextlib.asynccontextmanager
async def running(
    server: FakeTelegramServer, adapter: TelegramAdapter, bot: FakeBot
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop))
    await server.wait_for(lambda: bot.polls >= 1 or task.done(), "the first getUpdates")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.fixture
def world(tg: FakeTelegramServer):
    bot = tg.add_bot(TOKEN, "ling_lu_bot", "Ling Lu")
    alice = tg.add_user("Alice", "Smith", "alice")
    boss = tg.add_user("Boss")
    group = tg.add_group("Band", bots=[bot], admins=[boss])
    return bot, alice, boss, group


async def test_start_up_registers_identity_resumes_and_publishes_commands(tg, world, ling_lu):
    bot, *_ = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    adapter = make(tg, engine, clock)
    async with running(tg, adapter, bot):
        assert engine.identities == {("telegram", str(bot.id)): "ling_lu"}
        assert engine.resumed == [("telegram", "ling_lu")]
        assert adapter.identity is not None and adapter.identity.username == "ling_lu_bot"
        methods = [c.method for c in tg.calls]
        assert methods[:3] == ["getMe", "deleteWebhook", "setMyCommands"]
        assert tg.calls_to("deleteWebhook")[0].params.get("drop_pending_updates") is False
        poll = tg.calls_to("getUpdates")[0].params
        assert poll["allowed_updates"] == ["message", "edited_message"]


async def test_update_is_confirmed_only_after_receive_returned(tg, world, ling_lu):
    bot, alice, _, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    engine.gate = asyncio.Event()
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, alice, "first")
        update_id = bot.updates[-1]["update_id"]
        await tg.wait_for(lambda: len(engine.entered) == 1, "receive to start")
        polls = bot.polls
        assert bot.confirmed < update_id
        engine.gate.set()
        await tg.wait_for(lambda: bot.confirmed >= update_id, "the confirming getUpdates")
        assert bot.polls > polls
        assert [e.text for e, _ in engine.events] == ["first"]


async def test_a_crash_before_persisting_redelivers_the_update(tg, world, ling_lu):
    bot, alice, _, group = world
    stuck = RecordingEngine(ling_lu)
    stuck.gate = asyncio.Event()
    clock = FakeTime()
    task = asyncio.create_task(make(tg, stuck, clock).run(asyncio.Event()))
    tg.post(group, alice, "will you remember this?")
    await tg.wait_for(lambda: len(stuck.entered) == 1, "receive to start")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert bot.pending(), "the update must still be unconfirmed after the crash"

    engine = RecordingEngine(ling_lu)
    async with running(tg, make(tg, engine, clock), bot):
        await tg.wait_for(lambda: len(engine.events) == 1, "redelivery")
    assert engine.events[0][0].text == "will you remember this?"
    assert not bot.pending()


async def test_clean_stop_confirms_the_last_handled_update(tg, world, ling_lu):
    bot, alice, _, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, alice, "one")
        tg.post(group, alice, "two")
        last = bot.updates[-1]["update_id"]
        await tg.wait_for(lambda: len(engine.events) == 2, "both messages")
    assert bot.confirmed == last
    again = RecordingEngine(ling_lu)
    async with running(tg, make(tg, again, clock), bot):
        pass
    assert again.events == []


async def test_a_failed_receive_is_retried_without_confirming(tg, world, ling_lu):
    bot, alice, _, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    engine.fail_times = 2
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, alice, "persist me")
        await tg.wait_for(lambda: len(engine.events) == 1, "the retried message")
    assert len(engine.entered) == 3
    assert clock.sleeps[:2] == [1.0, 2.0]
    assert [e.text for e, _ in engine.events] == ["persist me"]


async def test_a_poison_update_is_skipped_after_five_attempts(tg, world, ling_lu, caplog):
    bot, alice, _, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    engine.fail_times = 5
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, alice, "poison")
        tg.post(group, alice, "next")
        await tg.wait_for(lambda: len(engine.events) == 1, "the message after the poison one")
    assert [e.text for e, _ in engine.events] == ["next"]
    assert "giving up on update" in caplog.text


async def test_messages_edits_and_start_reach_the_engine(tg, world, ling_lu):
    bot, alice, _, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    private = tg.private_chat(alice, bot)
    async with running(tg, make(tg, engine, clock), bot):
        posted = tg.post(group, alice, "hey @ling_lu_bot")
        tg.edit(group, posted["message_id"], "hey @ling_lu_bot, edited")
        tg.post(private, alice, "/start")
        await tg.wait_for(lambda: len(engine.events) == 2 and engine.opened, "three updates")
    message, edit = (e for e, _ in engine.events)
    assert isinstance(message, Message) and message.addressed == {"ling_lu"}
    assert isinstance(edit, Edit) and edit.text == "hey @ling_lu_bot, edited"
    assert engine.opened == [Channel("telegram", str(alice.id), direct=True)]
    assert [m["text"] for m in tg.sent(private)] == ["Hello there."]


async def test_allowed_chats_filters_and_still_confirms(tg, world, ling_lu):
    bot, alice, _, group = world
    other = tg.add_group("Elsewhere", bots=[bot])
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    async with running(tg, make(tg, engine, clock, allowed_chats=[group.id]), bot):
        tg.post(other, alice, "not here")
        tg.post(group, alice, "here")
        await tg.wait_for(lambda: len(engine.events) == 1, "the allowed message")
        await tg.wait_for(lambda: not bot.pending(), "both confirmed")
    assert [e.text for e, _ in engine.events] == ["here"]


async def test_state_changing_commands_need_a_group_admin(tg, world, ling_lu):
    bot, alice, boss, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    engine.command_text = "Ling Lu starts over."
    async with running(tg, make(tg, engine, clock), bot):
        refused = tg.post(group, alice, "/reset")
        await tg.wait_for(lambda: len(tg.sent(group)) == 1, "the refusal")
        allowed = tg.post(group, boss, "/reset@ling_lu_bot")
        await tg.wait_for(lambda: len(tg.sent(group)) == 2, "the command's answer")
        tg.post(group, alice, "/why")
        await tg.wait_for(lambda: len(tg.sent(group)) == 3, "the /why answer")
    first, second, third = tg.sent(group)
    assert first["text"] == "Only chat administrators can use /reset here."
    assert first["reply_to_message"]["message_id"] == refused["message_id"]
    assert second["text"] == "Ling Lu starts over."
    assert second["reply_to_message"]["message_id"] == allowed["message_id"]
    assert [(n, u.name) for _, n, _, u in engine.commands] == [
        ("reset", "Boss"),
        ("why", "Alice Smith"),
    ]
    assert third["text"] == "Ling Lu starts over."
    assert engine.events == []


async def test_commands_in_private_chats_need_no_admin_check(tg, world, ling_lu):
    bot, alice, *_ = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    private = tg.private_chat(alice, bot)
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(private, alice, "/mute")
        await tg.wait_for(lambda: len(tg.sent(private)) == 1, "the /mute answer")
    assert [name for _, name, _, _ in engine.commands] == ["mute"]
    assert tg.calls_to("getChatMember") == []


async def test_regen_runs_in_the_background_while_polling_goes_on(tg, world, ling_lu):
    bot, _, boss, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    engine.command_gate = asyncio.Event()
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, boss, "/regen")
        await tg.wait_for(lambda: len(engine.commands) == 1, "regen to start")
        tg.post(group, boss, "meanwhile")
        await tg.wait_for(lambda: len(engine.events) == 1, "a message during regen")
        engine.command_gate.set()
        await tg.wait_for(lambda: len(tg.sent(group)) == 1, "the regen answer")


async def test_a_long_command_answer_is_split(tg, world, ling_lu):
    bot, _, boss, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    engine.command_text = ("A fairly long line of statistics. " * 150).strip()
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, boss, "/stats")
        await tg.wait_for(lambda: len(tg.sent(group)) == 2, "two pieces")
    pieces = [m["text"] for m in tg.sent(group)]
    assert all(len(p) <= 4096 for p in pieces)
    assert " ".join(pieces) == engine.command_text


async def test_privacy_mode_is_reported_once_at_start(tg, ling_lu, caplog):
    bot = tg.add_bot(TOKEN, "ling_lu_bot", "Ling Lu", can_read_all_group_messages=False)
    caplog.set_level(logging.INFO, logger="salon")
    async with running(tg, make(tg, RecordingEngine(ling_lu), FakeTime()), bot):
        pass
    warnings = [r for r in caplog.records if "privacy mode" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "/setprivacy" in warnings[0].getMessage()


async def test_invalid_token_is_one_clear_error_without_the_token(tg, ling_lu):
    tg.add_bot("999:other-token", "other_bot", "Other")
    with pytest.raises(StartupError) as err:
        await make(tg, RecordingEngine(ling_lu), FakeTime()).run(asyncio.Event())
    text = str(err.value)
    assert "TG_TOKEN_TEST" in text and "rejected" in text
    assert TOKEN not in text and TOKEN.split(":")[1] not in text
    assert "\n" not in text


async def test_unreachable_api_is_a_startup_error(ling_lu):
    async with FakeTelegramServer() as gone:
        url = gone.url
    adapter = TelegramAdapter(
        TelegramEntry(bot="ling_lu", token_env="TG_TOKEN_TEST", base_url=url),
        ling_lu,
        RecordingEngine(ling_lu),  # type: ignore[arg-type]
        token=TOKEN,
    )
    with pytest.raises(StartupError, match="cannot reach the Bot API") as err:
        await adapter.run(asyncio.Event())
    assert TOKEN not in str(err.value)


async def test_the_token_never_reaches_the_log(tg, world, ling_lu, caplog):
    bot, alice, _, group = world
    caplog.set_level(logging.DEBUG)
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    tg.fail_next("getUpdates", error_code=502, description="Bad Gateway", retry_after=None)
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, alice, "hi")
        await tg.wait_for(lambda: len(engine.events) == 1, "the message")
    assert "getUpdates failed" in caplog.text
    assert TOKEN.split(":")[1] not in caplog.text


async def test_conflict_is_explained_and_polling_recovers(tg, world, ling_lu, caplog):
    bot, alice, _, group = world
    engine, clock = RecordingEngine(ling_lu), FakeTime()
    tg.fail_next(
        "getUpdates",
        error_code=409,
        description="Conflict: terminated by other getUpdates request",
        retry_after=None,
    )
    async with running(tg, make(tg, engine, clock), bot):
        tg.post(group, alice, "still there?")
        await tg.wait_for(lambda: len(engine.events) == 1, "the message after the conflict")
    assert "another process is polling this bot" in caplog.text


def test_redact_removes_the_token_and_its_secret_half():
    secret = TOKEN.split(":")[1]
    assert redact(f"url /bot{TOKEN}/getMe", TOKEN) == "url /bot[token]/getMe"
    assert redact(f"x {secret} y", TOKEN) == "x [token] y"
    assert redact("nothing", "") == "nothing"


# ----- the sender ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sender_for(server: FakeTelegramServer, clock: FakeTime) -> AsyncIterator[TelegramSender]:
    bot = Bot(TOKEN, base_url=f"{server.url}/bot", base_file_url=f"{server.url}/file/bot")
    await bot.initialize()
    try:
        yield TelegramSender(bot, sleep=clock.sleep, monotonic=clock.monotonic)
    finally:
        await bot.shutdown()


async def test_sender_replies_in_topics_and_returns_the_platform_id(tg, world):
    bot, alice, *_ = world
    forum = tg.add_group("Forum", bots=[bot], forum=True)
    topic = tg.create_topic(forum, "gigs", alice)
    asked = tg.post(forum, alice, "@ling_lu_bot which gig?", thread=topic)
    clock = FakeTime()
    async with sender_for(tg, clock) as sender:
        channel = Channel("telegram", f"{forum.id}:{topic}")
        sent = await sender.send(
            Outgoing(channel, "The Friday one.", reply_to=str(asked["message_id"]))
        )
        await sender.typing(channel)
    posted = tg.sent(forum)[-1]
    assert isinstance(sent, Sent) and sent.id == str(posted["message_id"])
    assert posted["message_thread_id"] == topic
    assert posted["reply_to_message"]["message_id"] == asked["message_id"]
    action = tg.calls_to("sendChatAction")[-1].params
    assert action == {"chat_id": forum.id, "action": "typing", "message_thread_id": topic}


async def test_sender_posts_even_if_the_replied_message_is_gone(tg, world):
    _, _, _, group = world
    async with sender_for(tg, FakeTime()) as sender:
        await sender.send(
            Outgoing(Channel("telegram", str(group.id)), "still here", reply_to="999")
        )
    assert [m["text"] for m in tg.sent(group)] == ["still here"]


async def test_sender_waits_out_retry_after(tg, world):
    _, _, _, group = world
    clock = FakeTime()
    tg.fail_next("sendMessage", retry_after=7)
    async with sender_for(tg, clock) as sender:
        await sender.send(Outgoing(Channel("telegram", str(group.id)), "patience"))
    assert 7.0 in clock.sleeps
    assert [m["text"] for m in tg.sent(group)] == ["patience"]
    assert len(tg.calls_to("sendMessage")) == 2


async def test_sender_gives_up_after_repeated_flood_errors(tg, world):
    _, _, _, group = world
    for _ in range(6):
        tg.fail_next("sendMessage", retry_after=1)
    async with sender_for(tg, FakeTime()) as sender:
        with pytest.raises(RetryAfter):
            await sender.send(Outgoing(Channel("telegram", str(group.id)), "nope"))
    assert tg.sent(group) == []


async def test_sender_spaces_messages_in_one_chat(tg, world):
    _, _, _, group = world
    clock = FakeTime()
    async with sender_for(tg, clock) as sender:
        channel = Channel("telegram", str(group.id))
        for text in ("one", "two", "three"):
            await sender.send(Outgoing(channel, text))
    assert clock.sleeps == [1.0, 1.0]


async def test_typing_failure_is_swallowed(tg, world):
    async with sender_for(tg, FakeTime()) as sender:
        await sender.typing(Channel("telegram", "-42"))
    assert tg.calls_to("sendChatAction")
