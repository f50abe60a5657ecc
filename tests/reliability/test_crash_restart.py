"""Crash and restart: kill -9 `salon console` and `salon run` at bad moments, start them again
on the same database.

Nothing said before the kill is lost and nothing is answered twice. `salon run` is killed with
a Telegram bot on the fake Bot API and with a Discord bot on the fake gateway, each in the
middle of a generation; the adapters' in-process restart tests (tests/adapters/) cover the
other windows (an unconfirmed update, messages missed while away).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.clock import VirtualClock
from core.config import resolve_character
from core.engine import build_engine
from core.sqlite_store import SqliteStore
from core.types import Channel, Message, Participant
from tests.adapters.test_cli import ROOT, salon
from tests.adapters.test_discord import until
from tests.conftest import write_config
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.model_server import FakeModelServer, last_messages
from tests.fakes.recording import Posted, RecordingSender
from tests.fakes.telegram_api import FakeTelegramServer

KEY_ENV = {"SALON_TEST_KEY": "sk-test-not-a-real-key"}
QUESTION = "Cheng Yi: @Lu did you tune the bass?"


def console_args(tmp_path: Path) -> list[str]:
    config = str(tmp_path / "config.toml")
    return ["console", "--config", config, "--bot", "ling_lu", "--clock", "virtual", "--seed", "1"]


def stored_texts(db: Path) -> list[str]:
    """The message texts in the database, read the way another process would."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT text FROM messages ORDER BY seq")]
        except sqlite3.OperationalError:  # the schema is not there yet
            return []


async def killed_console(tmp_path: Path, stdin: str, ready: Callable[[], bool]) -> str:
    """Start `salon console`, type `stdin` and keep the pipe open; SIGKILL it once `ready`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.cli", *console_args(tmp_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **KEY_ENV},
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(stdin.encode())
        await proc.stdin.drain()
        await until(lambda: ready() or proc.returncode is not None, 30)
        assert proc.returncode is None, "the console ended before it could be killed"
    finally:
        if proc.returncode is None:
            await kill_9(proc)
    assert proc.returncode == -signal.SIGKILL
    return (await proc.stdout.read()).decode()


async def test_kill_during_generation_then_restart_answers_exactly_once(
    model: FakeModelServer, tmp_path: Path
) -> None:
    write_config(tmp_path, model)
    model.delay = 30.0  # the first generation is still running when the process dies
    out = await killed_console(tmp_path, f"{QUESTION}\n/wait 2\n", lambda: len(model.requests) == 1)
    assert out == ""

    model.delay = 0.0
    model.replier = lambda body: "Of course I did."
    code, out, err = await salon(*console_args(tmp_path), stdin="", env=KEY_ENV)
    assert code == 0, err
    assert out == "Ling Lu: Of course I did.\n"
    assert len(model.requests) == 2
    contents = [m["content"] for m in last_messages(model)]
    assert contents.count(QUESTION) == 1

    code, out, err = await salon(*console_args(tmp_path), stdin="", env=KEY_ENV)
    assert (code, out) == (0, ""), err
    assert len(model.requests) == 2
    assert stored_texts(tmp_path / "salon.db") == [QUESTION.split(": ", 1)[1], "Of course I did."]


async def test_kill_before_the_decision_loses_nothing(
    model: FakeModelServer, tmp_path: Path
) -> None:
    """Killed after the message was stored but before the debounce fired: answered on restart."""
    write_config(tmp_path, model)
    db = tmp_path / "salon.db"
    said = ["Tao Le: who has the keys to the studio?", QUESTION]
    out = await killed_console(tmp_path, "\n".join(said) + "\n", lambda: len(stored_texts(db)) == 2)
    assert out == "" and model.requests == []

    model.replier = lambda body: "Tao Le has them, obviously."
    code, out, err = await salon(*console_args(tmp_path), stdin="", env=KEY_ENV)
    assert code == 0, err
    assert out == "Ling Lu: Tao Le has them, obviously.\n"
    assert [m["content"] for m in last_messages(model)][1:3] == said
    code, out, _ = await salon(*console_args(tmp_path), stdin="", env=KEY_ENV)
    assert out == "" and len(model.requests) == 1


class _Crash(Exception):
    """Stands for the process dying: nothing after the raising call is written."""


class CrashingStore(SqliteStore):
    """A SqliteStore that "dies" on the first state write after a character's reply is stored."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.armed = False

    async def add_message(self, message: Message) -> Any:
        result = await super().add_message(message)
        if message.author.character is not None:
            self.armed = True
        return result

    async def put_state(self, channel: Channel, character: str, state: Mapping[str, Any]) -> None:
        if self.armed:
            raise _Crash("the process died here")
        await super().put_state(channel, character, state)


async def run_engine(
    settings: Any,
    store: SqliteStore,
    body: Callable[[Any, RecordingSender, VirtualClock], Awaitable[None]],
    posted: list[Posted],
) -> None:
    clock = VirtualClock()
    lu = resolve_character("ling_lu")
    async with build_engine(settings, [lu], clock=clock, rng=random.Random(1), store=store) as e:
        sender = RecordingSender("ling_lu", clock.now, log=posted)
        await body(e, sender, clock)


async def test_crash_between_storing_the_reply_and_saving_state_does_not_answer_twice(
    model: FakeModelServer, tmp_path: Path
) -> None:
    """The narrowest kill window: the reply is posted and stored, its state write never happens.

    The restart must see that the reply already follows the question. (A kill between the
    platform accepting a reply and the store recording it cannot be told apart from a lost
    post; no test asks for exactly-once there.)
    """
    settings = write_config(tmp_path, model)
    channel = Channel("console", "group")
    posted: list[Posted] = []
    model.replier = lambda body: f"answer {len(model.requests)}"

    async def first(engine: Any, sender: RecordingSender, clock: VirtualClock) -> None:
        await engine.command(channel, "help", via="ling_lu", sender=sender)
        asker = Participant("console:cheng yi", "Cheng Yi")
        question = Message(channel, "q1", asker, "@Lu tuned?", clock.now(), frozenset({"ling_lu"}))
        await engine.receive(question, via="ling_lu", sender=sender)
        await clock.advance(5, idle=engine.idle)

    async def second(engine: Any, sender: RecordingSender, clock: VirtualClock) -> None:
        await engine.resume("console", via="ling_lu", sender=sender, only=channel)
        await engine.flush()
        await clock.advance(5, idle=engine.idle)

    await run_engine(settings, CrashingStore(settings.storage_path()), first, posted)
    assert [p.out.text for p in posted] == ["answer 1"]  # posted, stored, then "killed"
    await run_engine(settings, SqliteStore(settings.storage_path()), second, posted)
    assert [p.out.text for p in posted] == ["answer 1"]
    assert len(model.requests) == 1


QUIET_LU = """name = "Ling Lu"
profile = "You are Ling Lu."
[behavior]
talkativeness = 0.0
debounce_s = 0.0
"""


@contextlib.asynccontextmanager
async def salon_run(
    tmp_path: Path, env: Mapping[str, str], *, launcher: Sequence[str] = ("-m", "adapters.cli")
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`salon run` as its own process; stopped with SIGTERM at the end unless killed before."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *launcher, "run", "--config", str(tmp_path / "config.toml"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def kill_9(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL


async def stopped_cleanly(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()


def answered_once(model: FakeModelServer, tmp_path: Path, turn: str) -> None:
    """After the restart: two generations in all; the question once in the prompt and the store."""
    assert len(model.requests) == 2
    assert [m["content"] for m in last_messages(model)].count(turn) == 1
    question = turn.split(": ", 1)[1]
    assert stored_texts(tmp_path / "salon.db") == [question, "Of course I did."]


async def test_kill_9_salon_run_with_telegram_during_generation_answers_once_after_restart(
    model: FakeModelServer, tmp_path: Path
) -> None:
    (tmp_path / "lu.toml").write_text(QUIET_LU, "utf-8")
    async with FakeTelegramServer() as tg:
        token = "7000:TEST-kill-nine-secret-part"
        bot = tg.add_bot(token, "ling_lu_bot", "lu", can_read_all_group_messages=True)
        alice = tg.add_user("Alice", "Smith", "alice")
        group = tg.add_group("Band", bots=[bot])
        entry = f'[[telegram]]\nbot = "{tmp_path / "lu.toml"}"\ntoken_env = "TG_KILL9"\n'
        write_config(tmp_path, model, extra=entry + f'base_url = "{tg.url}"\n')
        env = {**KEY_ENV, "TG_KILL9": token}
        model.delay = 30.0  # the generation is still running when the process dies
        async with salon_run(tmp_path, env) as proc:
            await tg.wait_for(lambda: bot.polls > 0 or proc.returncode is not None, "a poll", 30)
            asked = tg.post(group, alice, "@ling_lu_bot did you tune the bass?")
            update_id = bot.updates[-1]["update_id"]
            await tg.wait_for(lambda: len(model.requests) == 1, "the generation", 30)
            await kill_9(proc)
        assert tg.sent(group) == []

        model.delay = 0.0
        model.replier = lambda body: "Of course I did."
        async with salon_run(tmp_path, env) as proc:
            await tg.wait_for(lambda: len(tg.sent(group)) == 1, "the answer after the restart", 30)
            await tg.wait_for(lambda: bot.confirmed >= update_id, "the update confirmed", 30)
            await stopped_cleanly(proc)
        (reply,) = tg.sent(group)
        assert reply["text"] == "Of course I did."
        assert reply["reply_to_message"]["message_id"] == asked["message_id"]
        answered_once(model, tmp_path, "Alice Smith: @ling_lu_bot did you tune the bass?")


async def test_kill_9_salon_run_with_discord_during_generation_answers_once_after_restart(
    model: FakeModelServer, tmp_path: Path
) -> None:
    (tmp_path / "lu.toml").write_text(QUIET_LU, "utf-8")
    async with FakeDiscord() as fake:
        token = "token-kill-nine-SECRET"
        bot = fake.add_bot("lu_bot", token)
        ali = fake.add_user("ali_99", global_name="Alison")
        guild = fake.add_guild("Musicians", [ali, bot], nicks={ali.id: "Ali"})
        general = fake.add_text_channel(guild, "general")
        entry = f'[[discord]]\nbot = "{tmp_path / "lu.toml"}"\ntoken_env = "DC_KILL9"\n'
        write_config(tmp_path, model, extra=entry)
        env = {
            **KEY_ENV,
            "DC_KILL9": token,
            "FAKE_DISCORD_API": fake.api_base,
            "FAKE_DISCORD_GATEWAY": fake.gateway_url,
        }
        launcher = ("-m", "tests.fakes.discord_salon")
        model.delay = 30.0  # the generation is still running when the process dies
        async with salon_run(tmp_path, env, launcher=launcher) as proc:
            await until(lambda: fake.connected(bot) or proc.returncode is not None, 30)
            asked = await fake.post(general, ali, f"<@{bot.id}> did you tune the bass?")
            await until(lambda: len(model.requests) == 1, 30)
            await kill_9(proc)
        assert fake.sent(general, bot) == []

        model.delay = 0.0
        model.replier = lambda body: "Of course I did."
        async with salon_run(tmp_path, env, launcher=launcher) as proc:
            await until(lambda: len(fake.sent(general, bot)) == 1, 30)
            await stopped_cleanly(proc)
        (reply,) = fake.sent(general, bot)
        assert reply.body["content"] == "Of course I did."
        assert str(reply.body["message_reference"]["message_id"]) == asked["id"]
        answered_once(model, tmp_path, "Ali: @lu_bot did you tune the bass?")  # mention as name
