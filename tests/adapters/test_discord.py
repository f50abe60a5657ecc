"""End to end: real discord.py against the fake Discord, the real engine and the fake model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.discord_adapter import DiscordAdapter
from core.clock import VirtualClock
from core.config import Character, DiscordEntry, Settings
from core.engine import Engine, build_engine
from core.errors import StartupError
from core.sqlite_store import SqliteStore
from core.store import StoredMessage
from core.types import Channel, Incoming, Message, Participant, Sender
from tests.conftest import character_file, write_config
from tests.fakes.discord_server import FakeChannel, FakeDiscord, FakeGuild, FakeUser, Post
from tests.fakes.model_server import FakeModelServer, last_messages

BEHAVIOR = """
[behavior]
talkativeness = 0.0
debounce_s = 1.0
continue_after_s = 60
max_continuations = 1
cooldown_s = 0
replies_per_minute = 0
user_replies_per_minute = 0
"""


@dataclass
class World:
    tmp_path: Path
    fake: FakeDiscord
    model: FakeModelServer
    clock: VirtualClock
    settings: Settings
    chars: dict[str, Character]
    bots: dict[str, FakeUser]
    ali: FakeUser
    bo: FakeUser
    guild: FakeGuild
    general: FakeChannel
    sleeps: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = VirtualClock()
    async with FakeModelServer() as model, FakeDiscord(now=clock.now) as fake:
        with fake.patched():
            chars = {
                "jiang_rang": character_file(
                    tmp_path,
                    "jiang_rang",
                    f'name = "Jiang Rang"\nprofile = "You are Jiang Rang."\n{BEHAVIOR}',
                ),
                "ling_lu": character_file(
                    tmp_path,
                    "ling_lu",
                    f'name = "Ling Lu"\nprofile = "You are Ling Lu."\n{BEHAVIOR}',
                ),
            }
            bots = {
                "jiang_rang": fake.add_bot("jiang_bot", "token-jiang-SECRET"),
                "ling_lu": fake.add_bot("lu_bot", "token-lu-SECRET"),
            }
            ali = fake.add_user("ali_99", global_name="Alison")
            bo = fake.add_user("bo")
            guild = fake.add_guild(
                "Musicians",
                [ali, bo, *bots.values()],
                nicks={ali.id: "Ali", bots["jiang_rang"].id: "Jiang Rang"},
            )
            general = fake.add_text_channel(guild, "general")
            yield World(
                tmp_path,
                fake,
                model,
                clock,
                write_config(tmp_path, model),
                chars,
                bots,
                ali,
                bo,
                guild,
                general,
            )


@dataclass
class Online:
    """Adapters running on one engine; `received` records what each adapter handed over."""

    world: World
    engine: Engine
    adapters: list[DiscordAdapter]
    received: set[tuple[str, str]] = field(default_factory=set)
    known: set[str] = field(default_factory=set)  # stored before this run started

    async def stored(self, channel: FakeChannel, message: dict[str, Any]) -> StoredMessage:
        ch = Channel("discord", str(channel.id), direct=channel.type == 1)
        found: list[StoredMessage] = []

        async def check() -> bool:
            record = await self.engine.store.get_message(ch, message["id"])
            if record is not None:
                found.append(record)
            return record is not None

        await until_async(check)
        return found[0]

    async def caught_up(self, channels: list[FakeChannel] | None = None) -> None:
        """Every message in `channels` reached the engine through every adapter that sees it."""
        fake = self.world.fake
        chans = channels if channels is not None else list(fake.channels.values())
        wanted = set()
        for adapter in self.adapters:
            bot = self.world.bots[adapter.key]
            for ch in chans:
                if bot in fake.bots_seeing(ch):
                    new = [m["id"] for m in ch.messages if m["id"] not in self.known]
                    wanted |= {(adapter.key, i) for i in new}
        await until(lambda: wanted <= self.received)

    async def settle(self, channels: list[FakeChannel] | None = None, step: float = 2.0) -> None:
        """Advance virtual time in steps until nobody posts any more."""
        for _ in range(10):
            before = len(self.world.fake.posts)
            await self.caught_up(channels)
            await self.world.clock.advance(step, self.engine.idle)
            await self.caught_up(channels)
            if len(self.world.fake.posts) == before:
                return
        raise AssertionError("the bots never went quiet")


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async def check() -> bool:
        return predicate()

    await until_async(check, timeout)


async def until_async(check: Callable[[], Any], timeout: float = 10.0) -> None:
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout)


def entry(key: str, **kw: Any) -> DiscordEntry:
    return DiscordEntry(bot=key, token_env=f"DISCORD_TOKEN_{key.upper()}", **kw)


@contextlib.asynccontextmanager
async def online(
    world: World, *keys: str, tokens: dict[str, str] | None = None, **entry_kw: Any
) -> AsyncIterator[Online]:
    chars = [world.chars[k] for k in keys]
    async with build_engine(
        world.settings, chars, clock=world.clock, rng=random.Random(1)
    ) as engine:
        running = Online(world, engine, [])
        for ch in world.fake.channels.values():
            rows = await engine.store.recent(Channel("discord", str(ch.id)), limit=10_000)
            running.known |= {r.msg_id for r in rows}
        original = engine.receive

        async def receive(event: Incoming, *, via: str, sender: Sender) -> None:
            await original(event, via=via, sender=sender)
            running.received.add((via, event.id))

        engine.receive = receive  # type: ignore[method-assign]
        running.adapters = [
            DiscordAdapter(
                entry(k, **entry_kw),
                world.chars[k],
                engine,
                token=(tokens or {}).get(k, world.bots[k].token or ""),
                clock=world.clock,
                sleep=world.sleep,
                guild_ready_timeout=0.02,
                identify_delay=0.0,
            )
            for k in keys
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop)) for a in running.adapters]
        try:
            await _until_online(running.adapters, tasks)
            yield running
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]  # an adapter that failed while the test ran


def ref_of(post: Post) -> str | None:
    """The id a bot's message replies to (discord.py sends it as a number)."""
    ref = post.body.get("message_reference")
    return str(ref["message_id"]) if ref else None


async def _until_online(adapters: list[DiscordAdapter], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every adapter is online; an adapter that ends first raises its error."""
    waiters = [asyncio.create_task(a.online.wait()) for a in adapters]
    try:
        while not all(w.done() for w in waiters):
            done, _ = await asyncio.wait(
                [*waiters, *tasks], timeout=10, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, "the adapters did not come online"
            for task in tasks:
                if task.done():
                    task.result()
                    raise AssertionError("an adapter stopped before it came online")
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def history_reads(fake: FakeDiscord, channel: FakeChannel) -> int:
    """How often the history of `channel` was read (what backfill does)."""
    path = f"/channels/{channel.id}/messages"
    return sum(1 for r in fake.requests if r.method == "GET" and r.path == path)


def contents(posts: list[Post]) -> list[str]:
    return [p.body["content"] for p in posts]


def prompt_of(model: FakeModelServer) -> str:
    """The contents of the newest model request, one per line."""
    return "\n".join(str(m["content"]) for m in last_messages(model))


# --------------------------------------------------------------------------- tests


async def test_mention_is_answered_as_a_reply_without_pings(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    jiang = world.bots["jiang_rang"]
    world.model.reply("Right here, Ali.")
    async with online(world, "jiang_rang") as run:
        chatter = await world.fake.post(world.general, world.bo, "nice weather today")
        await run.settle()
        assert world.fake.sent() == []  # unaddressed chatter goes through the policy
        ask = await world.fake.post(world.general, world.ali, f"<@{jiang.id}> are you there?")
        record = await run.stored(world.general, ask)
        assert record.addressed == frozenset({"jiang_rang"})
        assert record.author_name == "Ali"
        assert record.text == "@Jiang Rang are you there?"
        assert (await run.stored(world.general, chatter)).addressed == frozenset()
        await run.settle()
    posts = world.fake.sent(world.general, jiang)
    assert contents(posts) == ["Right here, Ali."]
    assert ref_of(posts[0]) == ask["id"]
    assert posts[0].body["allowed_mentions"] == {"parse": [], "replied_user": True}
    assert world.fake.typing_calls(world.general) >= 1
    assert "Ali: @Jiang Rang are you there?" in prompt_of(world.model)
    assert "bo: nice weather today" in prompt_of(world.model)
    assert "has connected to Gateway" in caplog.text
    assert "SECRET" not in caplog.text  # the bot token never reaches the logs


async def test_reply_to_the_bots_message_addresses_it(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    world.model.reply("Hello there.")
    world.model.reply("Yes, that was me.")
    async with online(world, "jiang_rang") as run:
        await world.fake.post(world.general, world.ali, f"hi <@{jiang.id}>")
        await run.settle()
        first = world.fake.sent(world.general, jiang)[0].message
        answer = await world.fake.post(
            world.general, world.bo, "was that you?", reply_to=int(first["id"])
        )
        record = await run.stored(world.general, answer)
        assert record.addressed == frozenset({"jiang_rang"})
        assert record.reply_to == first["id"]
        await run.settle()
    posts = world.fake.sent(world.general, jiang)
    assert contents(posts) == ["Hello there.", "Yes, that was me."]
    assert ref_of(posts[1]) == answer["id"]


async def test_thread_is_its_own_channel_and_allowlists_apply(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    other = world.fake.add_text_channel(world.guild, "off-topic")
    world.model.reply("Answering in the thread.")
    async with online(world, "jiang_rang", allowed_channels=[world.general.id]) as run:
        thread = await world.fake.add_thread(world.general, "gig planning")
        ignored = await world.fake.post(other, world.ali, f"<@{jiang.id}> over here?")
        ask = await world.fake.post(thread, world.ali, f"<@{jiang.id}> which song first?")
        record = await run.stored(thread, ask)
        assert record.channel_id == str(thread.id)
        await run.settle([thread])
        ch = Channel("discord", str(other.id))
        assert await run.engine.store.get_message(ch, ignored["id"]) is None
    assert contents(world.fake.sent(thread, jiang)) == ["Answering in the thread."]
    assert world.fake.sent(other) == []
    assert world.fake.sent(world.general) == []


async def test_direct_message_is_answered_and_continued(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    dm = world.fake.dm_channel(jiang, world.ali)
    world.model.reply("Class monitor! What's up?")
    world.model.reply("(waves) You're not even acknowledging me?")
    async with online(world, "jiang_rang") as run:
        hello = await world.fake.post(dm, world.ali, "hello")
        record = await run.stored(dm, hello)
        assert record.addressed == frozenset({"jiang_rang"})
        assert record.author_name == "Alison"  # no guild: the global display name
        await run.settle([dm])
        assert contents(world.fake.sent(dm)) == ["Class monitor! What's up?"]
        assert ref_of(world.fake.sent(dm)[0]) is None
        assert last_messages(world.model)[-1] == {"role": "user", "content": "hello"}
        await run.caught_up([dm])
        await world.clock.advance(61, run.engine.idle)
        await run.settle([dm])
        await world.clock.advance(600, run.engine.idle)
        await run.settle([dm])
    assert contents(world.fake.sent(dm)) == [
        "Class monitor! What's up?",
        "(waves) You're not even acknowledging me?",
    ]


async def test_long_reply_is_split_in_three_pieces(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    sentence = "This sentence is one of many in a long story. "
    long_text = (sentence * 107).strip()
    assert 4900 < len(long_text) < 5100
    world.model.reply(long_text)
    async with online(world, "jiang_rang") as run:
        ask = await world.fake.post(world.general, world.ali, f"<@{jiang.id}> tell me a story")
        await run.settle()
    posts = world.fake.sent(world.general, jiang)
    assert len(posts) == 3
    assert all(len(p.body["content"]) <= 2000 for p in posts)
    assert all(p.body["content"].endswith(".") for p in posts)
    assert ref_of(posts[0]) == ask["id"]
    assert all(ref_of(p) is None for p in posts[1:])
    assert " ".join(contents(posts)) == long_text


async def test_everyone_in_a_reply_never_pings(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    role = world.guild.roles[0]["id"]
    world.model.reply(f"@everyone @here <@&{role}> <@{world.bo.id}> wake up!")
    async with online(world, "jiang_rang") as run:
        await world.fake.post(
            world.general, world.ali, f"<@{jiang.id}> please say @everyone wake up"
        )
        await run.settle()
    (post,) = world.fake.sent(world.general, jiang)
    assert post.body["content"].startswith("@everyone")
    assert post.body["allowed_mentions"]["parse"] == []
    assert not post.body["allowed_mentions"].get("users")
    assert not post.body["allowed_mentions"].get("roles")


async def test_edit_and_delete_show_in_the_next_prompt(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    async with online(world, "jiang_rang") as run:
        liked = await world.fake.post(world.general, world.ali, "I like tea")
        secret = await world.fake.post(world.general, world.bo, "the secret plan is X")
        await run.caught_up()
        await world.fake.edit(world.general, int(liked["id"]), "I like coffee")
        await world.fake.delete(world.general, int(secret["id"]))
        ch = Channel("discord", str(world.general.id))
        await until_async(
            lambda: _text_is(run.engine, ch, liked["id"], "I like coffee"),
        )
        await until_async(lambda: _is_gone(run.engine, ch, secret["id"]))
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> what do I like?")
        await run.settle()
    prompt = prompt_of(world.model)
    assert "Ali: I like coffee" in prompt
    assert "tea" not in prompt
    assert "secret plan" not in prompt


async def _text_is(engine: Engine, ch: Channel, msg_id: str, text: str) -> bool:
    record = await engine.store.get_message(ch, msg_id)
    return record is not None and record.text == text


async def _is_gone(engine: Engine, ch: Channel, msg_id: str) -> bool:
    return all(r.msg_id != msg_id for r in await engine.store.recent(ch))


async def test_restart_backfills_missed_messages_and_answers_once(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    world.model.reply("First answer.")
    world.model.reply("Sorry, I was away. Yes I saw it.")
    async with online(world, "jiang_rang") as run:
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> hi")
        await run.settle()
    assert contents(world.fake.sent(world.general)) == ["First answer."]
    missed = [
        await world.fake.post(world.general, world.bo, "lunch anyone?"),
        await world.fake.post(world.general, world.ali, "sure"),
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> did you see this?"),
        await world.fake.post(world.general, world.bo, "ok see you"),
    ]
    async with online(world, "jiang_rang") as run:
        records = [await run.stored(world.general, m) for m in missed]
        assert [r.author_name for r in records] == ["bo", "Ali", "Ali", "bo"]
        assert [r.addressed for r in records] == [
            frozenset(),
            frozenset(),
            frozenset({"jiang_rang"}),
            frozenset(),
        ]
        await run.settle()
    assert history_reads(world.fake, world.general) == 1
    posts = world.fake.sent(world.general, jiang)
    assert contents(posts) == ["First answer.", "Sorry, I was away. Yes I saw it."]
    assert ref_of(posts[1]) == missed[2]["id"]
    requests = len(world.model.requests)
    async with online(world, "jiang_rang") as run:
        await run.settle()
    assert len(world.fake.sent(world.general, jiang)) == 2
    assert len(world.model.requests) == requests


async def test_a_reply_stored_while_the_gateway_was_down_hides_no_missed_message(
    world: World,
) -> None:
    jiang = world.bots["jiang_rang"]
    world.model.reply("First answer.")
    world.model.reply("Got it.")
    async with online(world, "jiang_rang") as run:
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> hi")
        await run.settle()
    missed = await world.fake.post(world.general, world.ali, f"<@{jiang.id}> and this?")
    late = await world.fake.post(world.general, jiang, "a reply the engine stored meanwhile")
    store = SqliteStore(world.settings.storage_path())
    await store.open()
    author = Participant(str(jiang.id), "Jiang Rang", is_bot=True, character="jiang_rang")
    channel = Channel("discord", str(world.general.id))
    await store.add_message(
        Message(channel, late["id"], author, late["content"], world.clock.now())
    )
    await store.close()
    async with online(world, "jiang_rang") as run:
        assert (await run.stored(world.general, missed)).addressed == frozenset({"jiang_rang"})
        await run.settle()
    posts = world.fake.sent(world.general, jiang)
    assert contents(posts) == ["First answer.", "Got it."]
    assert ref_of(posts[1]) == missed["id"]


async def test_two_characters_answer_each_other_within_the_loop_bound(world: World) -> None:
    jiang, lu = world.bots["jiang_rang"], world.bots["ling_lu"]

    def replier(body: dict[str, Any]) -> str:
        speaker = str(body["messages"][-1]["content"])
        other = lu if speaker.startswith("Jiang Rang") else jiang
        return f"<@{other.id}> your turn"

    world.model.replier = replier
    outsider = world.fake.add_bot("music_bot", "token-music")
    world.guild.members[outsider.id] = outsider
    async with online(world, "jiang_rang", "ling_lu") as run:
        noise = await world.fake.post(world.general, outsider, "Now playing: a song")
        assert (await run.stored(world.general, noise)).author_is_bot
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> start the game")
        await run.settle()
    posts = world.fake.sent(world.general)
    assert [p.bot.id for p in posts] == [jiang.id, lu.id, jiang.id]


async def test_rate_limit_429_is_retried(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    world.model.reply("one")
    world.model.reply("two")
    async with online(world, "jiang_rang") as run:
        world.fake.fail("POST", r"/channels/\d+/messages", retry_after=0.01, via=True)
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> first")
        await run.settle()
        world.fake.fail("POST", r"/channels/\d+/messages", retry_after=2.0, via=False)
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> second")
        await run.settle()
    assert contents(world.fake.sent(world.general, jiang)) == ["one", "two"]
    posts = [r for r in world.fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert len(posts) == 4
    assert 2.0 in world.sleeps  # the Retry-After of the 429 discord.py did not retry itself


async def test_invalid_token_is_one_clear_startup_error(world: World) -> None:
    with pytest.raises(StartupError) as info:
        async with online(world, "jiang_rang", tokens={"jiang_rang": "wrong-SECRET-token"}):
            pass
    text = str(info.value)
    assert "DISCORD_TOKEN_JIANG_RANG" in text
    assert "SECRET" not in text
    assert "\n" not in text


async def test_missing_message_content_intent_says_where_to_enable_it(world: World) -> None:
    world.fake.add_bot("no_intent", "token-nointent", message_content_allowed=False)
    with pytest.raises(StartupError) as info:
        async with online(world, "jiang_rang", tokens={"jiang_rang": "token-nointent"}):
            pass
    text = str(info.value)
    assert "Message Content Intent" in text
    assert "Privileged Gateway Intents" in text
    assert "token-nointent" not in text


async def test_slash_commands_are_synced_and_checked(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    fake = world.fake
    world.model.reply("I'm back.")
    async with online(world, "jiang_rang") as run:
        synced = {c["name"]: c for c in fake.commands[jiang.id]}
        assert set(synced) == {"reset", "regen", "why", "stats", "mute", "unmute", "help"}
        assert synced["mute"]["default_member_permissions"] == str(1 << 13)
        assert synced["why"]["default_member_permissions"] is None

        refused = await fake.slash(jiang, world.general, world.bo, "mute")
        await until(lambda: bool(fake.interaction_texts(refused)))
        assert "Manage Messages" in fake.interaction_texts(refused)[0]

        muted = await fake.slash(jiang, world.general, world.ali, "mute", manage_messages=True)
        await until(lambda: bool(fake.interaction_texts(muted)))
        assert "muted" in fake.interaction_texts(muted)[0]
        await fake.post(world.general, world.ali, f"<@{jiang.id}> hello?")
        await run.settle()
        assert fake.sent(world.general, jiang) == []

        why = await fake.slash(jiang, world.general, world.bo, "why")
        await until(lambda: bool(fake.interaction_texts(why)))
        assert fake.interaction_texts(why)[0].startswith("Jiang Rang: silent: muted")
        assert fake.interaction_replies[why][0]["data"]["flags"] & 64  # ephemeral

        unmuted = await fake.slash(jiang, world.general, world.ali, "unmute", manage_messages=True)
        await until(lambda: bool(fake.interaction_texts(unmuted)))
        await fake.post(world.general, world.ali, f"<@{jiang.id}> now?")
        await run.settle()
    assert contents(fake.sent(world.general, jiang)) == ["I'm back."]


async def test_gateway_reconnect_and_dropped_connection_resume(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    fake = world.fake
    world.model.reply("still here")
    world.model.reply("back again")
    async with online(world, "jiang_rang") as run:
        await fake.reconnect(jiang)
        await until(lambda: fake.resume_count.get(jiang.id) == 1 and fake.connected(jiang))
        await fake.post(world.general, world.ali, f"<@{jiang.id}> after reconnect")
        await run.settle()
        await fake.drop(jiang)
        await until(lambda: not fake.connected(jiang) or fake.resume_count.get(jiang.id) == 2)
        replayed = await fake.post(world.general, world.ali, f"<@{jiang.id}> while you were out")
        await until(lambda: fake.resume_count.get(jiang.id) == 2)
        await run.stored(world.general, replayed)
        await run.settle()
    assert fake.identify_count[jiang.id] == 1
    assert contents(fake.sent(world.general, jiang)) == ["still here", "back again"]


async def test_mentions_channels_emoji_and_files_read_as_people_see_them(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    jiang_role = next(
        r["id"] for r in world.guild.roles if r.get("tags", {}).get("bot_id") == str(jiang.id)
    )
    async with online(world, "jiang_rang") as run:
        message = await world.fake.post(
            world.general,
            world.ali,
            f"<@&{jiang_role}> ask <@{world.bo.id}> in <#{world.general.id}> "
            "<:party:123456789012345678> see",
            attachments=("score.pdf",),
        )
        record = await run.stored(world.general, message)
    assert record.addressed == frozenset({"jiang_rang"})  # the bot's managed role
    assert record.text == "@jiang_bot ask @bo in #general :party: see\n[attachment: score.pdf]"


async def test_unresumable_session_reidentifies_and_backfills(world: World) -> None:
    jiang = world.bots["jiang_rang"]
    fake = world.fake
    world.model.reply("first")
    world.model.reply("caught up")
    missed: list[dict[str, Any]] = []

    async def while_away(bot: FakeUser) -> None:
        missed.append(await fake.post(world.general, world.ali, f"<@{jiang.id}> you there?"))

    async with online(world, "jiang_rang") as run:
        await fake.post(world.general, world.ali, f"<@{jiang.id}> hi")
        await run.settle()
        fake.before_ready = while_away
        await fake.invalidate(jiang)
        await until(lambda: fake.identify_count.get(jiang.id) == 2)
        record = await run.stored(world.general, missed[0])
        assert record.addressed == frozenset({"jiang_rang"})
        await run.settle()
    assert contents(fake.sent(world.general, jiang)) == ["first", "caught up"]
    assert ref_of(fake.sent(world.general, jiang)[1]) == missed[0]["id"]
    assert 0.0 in world.sleeps  # the identify delay goes through the injected sleep
    assert history_reads(fake, world.general) == 1
