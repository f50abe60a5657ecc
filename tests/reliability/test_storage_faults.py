"""Storage faults: a database that cannot be used gives one clear error, never a loop of them.

`salon console` as a subprocess on broken history files (tests/adapters/test_cli.py already
covers a file of garbage bytes): each case exits 2 with one line that names the file and no
traceback. One in-process case covers a database that fails after start-up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from core.clock import VirtualClock
from core.config import resolve_character
from core.engine import build_engine
from core.sqlite_store import SqliteStore
from core.store import StoreError
from core.types import Channel, Message, Participant
from tests.adapters.test_cli import salon
from tests.conftest import write_config
from tests.fakes.model_server import FakeModelServer
from tests.fakes.recording import Posted, RecordingSender, tapped

KEY_ENV = {"SALON_TEST_KEY": "k"}
SCRIPT = "Ann: @Lu hi\n/wait 2\nAnn: @Lu are you there?\n/wait 2\nBo: @Lu hello?\n/wait 2\n"


async def console(tmp_path: Path, stdin: str = SCRIPT) -> tuple[int, str, str]:
    config = str(tmp_path / "config.toml")
    return await salon(
        "console", "--config", config, "--bot", "ling_lu", "--clock", "virtual",
        stdin=stdin, env=KEY_ENV,
    )  # fmt: skip


def assert_one_clear_error(code: int, out: str, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert out == ""
    assert len(lines) == 1, err
    assert lines[0].startswith("salon: cannot open the history database") or lines[0].startswith(
        "salon: history database"
    ), err
    assert all(w in lines[0] for w in words), err
    assert "Traceback" not in err


def with_storage(tmp_path: Path, model: FakeModelServer, path: str) -> None:
    write_config(tmp_path, model)
    config = tmp_path / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace('path = "salon.db"', f'path = "{path}"'),
        encoding="utf-8",
    )


async def filled_database(path: Path, messages: int = 300) -> None:
    """A real salon database with enough history and usage to span many pages."""
    async with SqliteStore(path) as store:
        channel = Channel("console", "group")
        ann = Participant("console:ann", "Ann")
        for i in range(messages):
            text = f"message number {i} " * 12
            await store.add_message(Message(channel, f"old-{i}", ann, text, 1_699_990_000.0 + i))
        for day in range(60):
            await store.add_usage(
                channel, "ling_lu", f"2023-09-{day:02d}",
                prompt_tokens=100, completion_tokens=10, cached_tokens=0,
            )  # fmt: skip
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def smash_table(path: Path, table: str) -> None:
    """Overwrite the root page of `table` with garbage, the way a bad disk block would."""
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    with path.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xff" * size)


async def test_database_path_is_a_directory(model: FakeModelServer, tmp_path: Path) -> None:
    write_config(tmp_path, model)
    (tmp_path / "salon.db").mkdir()
    assert_one_clear_error(*await console(tmp_path), "salon.db", "directory")


async def test_database_parent_is_a_file(model: FakeModelServer, tmp_path: Path) -> None:
    with_storage(tmp_path, model, "data/salon.db")
    (tmp_path / "data").write_text("not a directory", encoding="utf-8")
    assert_one_clear_error(*await console(tmp_path), "data", "not a directory")


async def test_database_from_a_newer_salon(model: FakeModelServer, tmp_path: Path) -> None:
    write_config(tmp_path, model)
    await filled_database(tmp_path / "salon.db", messages=3)
    with sqlite3.connect(tmp_path / "salon.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    assert_one_clear_error(*await console(tmp_path), "salon.db", "newer salon")


async def test_truncated_database(model: FakeModelServer, tmp_path: Path) -> None:
    write_config(tmp_path, model)
    db = tmp_path / "salon.db"
    await filled_database(db)
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    assert_one_clear_error(*await console(tmp_path), "salon.db", "malformed")


async def test_corrupt_message_table(model: FakeModelServer, tmp_path: Path) -> None:
    write_config(tmp_path, model)
    db = tmp_path / "salon.db"
    await filled_database(db)
    smash_table(db, "messages")
    assert_one_clear_error(*await console(tmp_path), "salon.db", "malformed")


async def test_database_locked_by_another_program(model: FakeModelServer, tmp_path: Path) -> None:
    write_config(tmp_path, model)
    db = tmp_path / "salon.db"
    await filled_database(db, messages=3)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # e.g. a second salon writing to the same file
        holder.execute("UPDATE kv SET value = value")
        code, out, err = await console(tmp_path)  # waits out SQLite's 5 s busy timeout
    finally:
        holder.close()
    assert_one_clear_error(code, out, err, "salon.db", "another program")


async def test_unopenable_location(model: FakeModelServer, tmp_path: Path) -> None:
    """A place nobody, not even root, can create files in: /proc. Three runs, because a store
    thread outliving the event loop used to print tracebacks after the line in most runs."""
    with_storage(tmp_path, model, "/proc/salon-reliability.db")
    for _ in range(3):
        code, out, err = await console(tmp_path)
        assert_one_clear_error(code, out, err, "/proc/salon-reliability.db", "unable to open")


async def test_empty_database_file_is_a_new_database(
    model: FakeModelServer, tmp_path: Path
) -> None:
    write_config(tmp_path, model)
    (tmp_path / "salon.db").touch()
    model.replier = lambda body: "Hmph."
    code, out, err = await console(tmp_path, "Ann: @Lu hi\n/wait 2\n")
    assert (code, out) == (0, "Ling Lu: Hmph.\n"), err


class FailingUsageStore(SqliteStore):
    """The disk goes bad while salon runs: recording model usage fails from then on."""

    async def add_usage(self, *args: Any, **kwargs: Any) -> None:
        raise StoreError(f"history database {self.path}: disk I/O error")


async def test_database_failing_at_run_time_stops_with_one_error(
    model: FakeModelServer, tmp_path: Path
) -> None:
    """Past start-up: the first failed write stops the character for good with one logged
    error, instead of an error (and a paid model request) for every message that follows.
    The reply already paid for still goes out: usage is bookkeeping, written beside it."""
    settings = write_config(tmp_path, model)
    clock = VirtualClock()
    posted: list[Posted] = []
    channel = Channel("console", "group")
    with tapped(logging.INFO) as tap:
        async with build_engine(
            settings, [resolve_character("ling_lu")], clock=clock, rng=random.Random(1),
            store=FailingUsageStore(settings.storage_path()),
        ) as engine:  # fmt: skip
            sender = RecordingSender("ling_lu", clock.now, log=posted)
            for i in range(3):
                ask = Message(
                    channel, f"m{i}", Participant("u", "Ann"), f"@Lu hi {i}", clock.now(),
                    frozenset({"ling_lu"}),
                )  # fmt: skip
                await engine.receive(ask, via="ling_lu", sender=sender)
                await clock.advance(5, idle=engine.idle)
            fatal = engine.fatal
    assert isinstance(fatal, StoreError)
    assert len(model.requests) == 1 and [p.out.text for p in posted] == ["ok"]
    errors = tap.lines(level=logging.ERROR)
    assert len(errors) == 1 and "disk I/O error" in errors[0] and "Traceback" not in errors[0]


async def test_corrupt_usage_table_is_caught_at_start_up(
    model: FakeModelServer, tmp_path: Path
) -> None:
    write_config(tmp_path, model)
    db = tmp_path / "salon.db"
    await filled_database(db)
    smash_table(db, "usage_daily")
    model.replier = lambda body: "Hmph."
    code, out, err = await console(tmp_path)
    assert model.requests == []
    assert_one_clear_error(code, out, err, "salon.db", "malformed")


def test_smash_table_really_corrupts(tmp_path: Path) -> None:
    """The corruption helper does what the tests above rely on (a check on the test itself)."""
    db = tmp_path / "salon.db"
    asyncio.run(filled_database(db, messages=50))
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    smash_table(copy, "usage_daily")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    with sqlite3.connect(copy) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute("SELECT * FROM usage_daily").fetchall()
