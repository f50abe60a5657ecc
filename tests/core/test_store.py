"""The SQLite history store: dedup, edits, deletes, windows, state, usage, migrations, bad paths,
and its batcher: group commit per loop iteration, per-call rollback, lost transactions, locks,
checkpoints, close, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import sqlite_batch, sqlite_store
from core.errors import StartupError
from core.sqlite_store import SqliteStore
from core.store import AddResult, Store, StoreError, Usage
from core.types import Channel, Message, Participant

ROOM = Channel("console", "room")
OTHER = Channel("console", "other")
TG = Channel("telegram", "-100200")
ALICE = Participant("u1", "Alice")
LING = Participant("b1", "Ling Lu", is_bot=True, character="ling_lu")
T0 = 1_700_000_000.0


def permissions_enforced() -> bool:
    """False for root (or CAP_DAC_OVERRIDE), which writes into a read-only directory anyway."""
    with tempfile.TemporaryDirectory() as scratch:
        locked = Path(scratch) / "locked"
        locked.mkdir(mode=0o555)
        try:
            (locked / "probe").touch()
        except PermissionError:
            return True
        finally:
            locked.chmod(0o755)
        return False


IGNORES_PERMISSIONS = not permissions_enforced()


def msg(
    msg_id: str,
    text: str = "hi",
    *,
    channel: Channel = ROOM,
    author: Participant = ALICE,
    at: float = T0,
    addressed: frozenset[str] = frozenset(),
    reply_to: str | None = None,
) -> Message:
    return Message(channel, msg_id, author, text, at, addressed, reply_to)


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(":memory:")
    await opened.open()
    yield opened
    await opened.close()


def assert_one_line_error(error: StoreError, path: Path | str, *words: str) -> None:
    text = str(error)
    assert "\n" not in text
    assert str(path) in text
    assert "[storage] path" in text
    for word in words:
        assert word in text
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


async def test_sqlite_store_satisfies_the_protocol() -> None:
    implementation: Store = SqliteStore(":memory:")
    await implementation.open()
    await implementation.close()
    await implementation.close()
    assert issubclass(StoreError, StartupError) and StoreError("x").exit_code == 2


async def test_add_stores_every_field(store: SqliteStore) -> None:
    result = await store.add_message(
        msg("m1", "hello", author=LING, addressed=frozenset({"jiang"}), reply_to="m0")
    )
    assert result.new and result.newly_addressed == {"jiang"}
    fetched = await store.get_message(ROOM, "m1")
    assert fetched == result.record
    assert fetched is not None
    assert (fetched.platform, fetched.channel_id, fetched.msg_id) == ("console", "room", "m1")
    assert (fetched.author_id, fetched.author_name, fetched.author_is_bot) == (
        "b1",
        "Ling Lu",
        True,
    )
    assert fetched.character == "ling_lu"
    assert (fetched.text, fetched.at, fetched.reply_to) == ("hello", T0, "m0")
    assert fetched.addressed == {"jiang"} and not fetched.deleted and fetched.edited_at is None
    assert await store.get_message(ROOM, "nope") is None


async def test_duplicate_delivery_stores_once_and_merges_addressed(store: SqliteStore) -> None:
    first = await store.add_message(msg("m1", "original", addressed=frozenset({"ling_lu"})))
    again = await store.add_message(
        msg("m1", "redelivered text", at=T0 + 5, addressed=frozenset({"jiang_rang"}))
    )
    assert not again.new
    assert again.newly_addressed == {"jiang_rang"}
    assert again.record.seq == first.record.seq
    assert again.record.text == "original" and again.record.at == T0
    assert again.record.addressed == {"ling_lu", "jiang_rang"}

    third = await store.add_message(msg("m1", addressed=frozenset({"ling_lu"})))
    assert not third.new and third.newly_addressed == frozenset()
    assert third.record.addressed == {"ling_lu", "jiang_rang"}

    stored = await store.get_message(ROOM, "m1")
    assert stored is not None and stored.addressed == {"ling_lu", "jiang_rang"}
    assert [m.msg_id for m in await store.recent(ROOM)] == ["m1"]


async def test_same_message_id_in_other_channels_is_another_message(store: SqliteStore) -> None:
    a = await store.add_message(msg("7"))
    b = await store.add_message(msg("7", channel=OTHER))
    c = await store.add_message(msg("7", channel=Channel("telegram", "room")))
    assert a.new and b.new and c.new
    assert len({a.record.seq, b.record.seq, c.record.seq}) == 3


async def test_concurrent_deliveries_are_stored_once_in_arrival_order(store: SqliteStore) -> None:
    messages = [msg(f"m{i % 10}", addressed=frozenset({f"c{i}"})) for i in range(30)]
    results = await asyncio.gather(*(store.add_message(m) for m in messages))
    assert sum(r.new for r in results) == 10
    recent = await store.recent(ROOM)
    assert [m.msg_id for m in recent] == [f"m{i}" for i in range(10)]
    assert [m.seq for m in recent] == sorted(m.seq for m in recent)
    for stored in recent:
        index = int(stored.msg_id[1:])
        assert stored.addressed == {f"c{index}", f"c{index + 10}", f"c{index + 20}"}


async def test_edit_replaces_text_and_ignores_stale_edits(store: SqliteStore) -> None:
    await store.add_message(msg("m1", "first"))
    edited = await store.edit_message(ROOM, "m1", "second", T0 + 10)
    assert edited is not None
    assert (edited.text, edited.at, edited.edited_at) == ("second", T0, T0 + 10)
    stale = await store.edit_message(ROOM, "m1", "older edit", T0 + 5)
    assert stale is not None and stale.text == "second"
    assert await store.edit_message(ROOM, "unknown", "x", T0) is None
    assert await store.edit_message(OTHER, "m1", "x", T0 + 20) is None
    fetched = await store.get_message(ROOM, "m1")
    assert fetched is not None and fetched.text == "second"


async def test_delete_is_soft_and_hides_from_recent(store: SqliteStore) -> None:
    for i in range(3):
        await store.add_message(msg(f"m{i}", at=T0 + i))
    deleted = await store.delete_message(ROOM, "m2")
    assert deleted is not None and deleted.deleted and deleted.msg_id == "m2"
    assert [m.msg_id for m in await store.recent(ROOM)] == ["m0", "m1"]
    last = await store.last_message(ROOM)
    assert last is not None and last.msg_id == "m1"
    kept = await store.get_message(ROOM, "m2")
    assert kept is not None and kept.deleted
    assert await store.delete_message(ROOM, "unknown") is None

    redelivered = await store.add_message(msg("m2"))
    assert not redelivered.new and redelivered.record.deleted
    assert [m.msg_id for m in await store.recent(ROOM)] == ["m0", "m1"]


async def test_recent_window_ordering_limit_and_after_seq(store: SqliteStore) -> None:
    seqs = []
    for i in range(10):
        seqs.append((await store.add_message(msg(f"m{i}", at=T0 + i))).record.seq)
        await store.add_message(msg(f"o{i}", channel=OTHER))
    assert seqs == sorted(seqs)

    everything = await store.recent(ROOM)
    assert [m.msg_id for m in everything] == [f"m{i}" for i in range(10)]
    assert [m.msg_id for m in await store.recent(ROOM, limit=3)] == ["m7", "m8", "m9"]
    after = await store.recent(ROOM, after_seq=seqs[5])
    assert [m.msg_id for m in after] == ["m6", "m7", "m8", "m9"]
    both = await store.recent(ROOM, after_seq=seqs[2], limit=2)
    assert [m.msg_id for m in both] == ["m8", "m9"]
    await store.delete_message(ROOM, "m9")
    assert [m.msg_id for m in await store.recent(ROOM, limit=2)] == ["m7", "m8"]
    assert await store.recent(ROOM, limit=0) == []
    assert await store.recent(ROOM, after_seq=seqs[-1]) == []
    assert await store.recent(Channel("console", "empty")) == []
    assert await store.last_message(Channel("console", "empty")) is None


async def test_state_round_trip_per_channel_and_character(store: SqliteStore) -> None:
    assert await store.get_state(ROOM, "ling_lu") == {}
    state = {"muted": True, "n": 3, "why": "凌露 — ok", "nested": {"list": [1, 2.5, None]}}
    await store.put_state(ROOM, "ling_lu", state)
    assert await store.get_state(ROOM, "ling_lu") == state
    assert await store.get_state(ROOM, "jiang_rang") == {}
    assert await store.get_state(OTHER, "ling_lu") == {}
    assert await store.get_state(Channel("telegram", "room"), "ling_lu") == {}
    await store.put_state(ROOM, "ling_lu", {"muted": False})
    assert await store.get_state(ROOM, "ling_lu") == {"muted": False}
    with pytest.raises(TypeError):
        await store.put_state(ROOM, "ling_lu", {"bad": object()})
    assert await store.get_state(ROOM, "ling_lu") == {"muted": False}


async def test_many_states_are_written_in_one_commit(store: SqliteStore) -> None:
    statements = await traced(store)
    statements.clear()
    await store.put_states(
        [(ROOM, "ling_lu", {"n": 1}), (OTHER, "ling_lu", {"n": 2}), (ROOM, "jiang_rang", {})]
    )
    assert statements.count("COMMIT") == 1
    assert await store.get_state(ROOM, "ling_lu") == {"n": 1}
    assert await store.get_state(OTHER, "ling_lu") == {"n": 2}
    await store.put_states([])
    with pytest.raises(TypeError):
        await store.put_states([(ROOM, "ling_lu", {"n": 3}), (OTHER, "ling_lu", {"x": object()})])
    assert await store.get_state(ROOM, "ling_lu") == {"n": 1}, "all or nothing"


async def test_usage_sums_over_the_filters_given(store: SqliteStore) -> None:
    assert await store.usage() == Usage()
    await store.add_usage(
        ROOM, "ling_lu", "2025-01-01", prompt_tokens=100, completion_tokens=10, cached_tokens=50
    )
    await store.add_usage(
        ROOM, "ling_lu", "2025-01-01", prompt_tokens=200, completion_tokens=20, cached_tokens=0
    )
    await store.add_usage(
        ROOM, "ling_lu", "2025-01-02", prompt_tokens=1, completion_tokens=2, cached_tokens=3
    )
    await store.add_usage(
        OTHER, "jiang_rang", "2025-01-01", prompt_tokens=7, completion_tokens=8, cached_tokens=9
    )
    await store.add_usage(
        TG, "ling_lu", "2025-01-02", prompt_tokens=1000, completion_tokens=0, cached_tokens=0
    )

    assert await store.usage() == Usage(5, 1308, 40, 62)
    assert await store.usage(character="ling_lu") == Usage(4, 1301, 32, 53)
    assert await store.usage(channel=ROOM) == Usage(3, 301, 32, 53)
    assert await store.usage(day="2025-01-01") == Usage(3, 307, 38, 59)
    assert await store.usage(character="ling_lu", day="2025-01-02") == Usage(2, 1001, 2, 3)
    assert await store.usage(character="ling_lu", channel=ROOM, day="2025-01-01") == Usage(
        2, 300, 30, 50
    )
    assert await store.usage(character="jiang_rang", channel=ROOM) == Usage()
    assert await store.usage(channel=Channel("console", "-100200")) == Usage()


async def test_kv_set_get_overwrite(store: SqliteStore) -> None:
    assert await store.get_kv("telegram:ling_lu:offset") is None
    await store.set_kv("telegram:ling_lu:offset", "41")
    await store.set_kv("other", "")
    assert await store.get_kv("telegram:ling_lu:offset") == "41"
    await store.set_kv("telegram:ling_lu:offset", "42")
    assert await store.get_kv("telegram:ling_lu:offset") == "42"
    assert await store.get_kv("other") == ""


async def test_active_channels_report_newest_message(store: SqliteStore) -> None:
    d1, d2, d3 = Channel("discord", "1"), Channel("discord", "2"), Channel("discord", "3")
    await store.add_message(msg("100", channel=d1, at=T0))
    await store.add_message(msg("101", channel=d1, at=T0 + 100))
    await store.add_message(msg("200", channel=d2, at=T0 + 50))
    await store.add_message(msg("300", channel=d3, at=T0 - 1000))
    await store.add_message(msg("900", channel=Channel("telegram", "1"), at=T0 + 100))
    await store.add_message(msg("102", channel=d1, at=T0 + 110))
    await store.delete_message(d1, "102")

    assert await store.active_channels("discord", T0) == [("1", "102"), ("2", "200")]
    assert await store.active_channels("discord", T0 + 60) == [("1", "102")]
    assert await store.active_channels("discord", T0 - 5000) == [
        ("1", "102"),
        ("3", "300"),
        ("2", "200"),
    ]
    assert await store.active_channels("discord", T0 + 1000) == []
    assert await store.active_channels("telegram", T0) == [("1", "900")]
    assert await store.active_channels("console", 0) == []


TEXTS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(TEXTS, min_size=1, max_size=5), name=TEXTS)
def test_arbitrary_unicode_text_is_stored_exactly(texts: list[str], name: str) -> None:
    async def run() -> None:
        async with SqliteStore(":memory:") as db:
            for i, text in enumerate(texts):
                await db.add_message(msg(str(i), text, author=Participant("u", name)))
            stored = await db.recent(ROOM)
            assert [m.text for m in stored] == texts
            assert all(m.author_name == name for m in stored)
            await db.edit_message(ROOM, "0", texts[-1], T0 + 1)
            edited = await db.get_message(ROOM, "0")
            assert edited is not None and edited.text == texts[-1]

    asyncio.run(run())


async def test_large_empty_and_multiline_texts_round_trip(tmp_path: Path) -> None:
    big = ("Ling Lu: 凌露 🎻 long line\n" * 5000)[: 100 * 1024]
    samples = {
        "big": big,
        "empty": "",
        "lines": "one\ntwo\r\nthree\n\n",
        "spaces": "  padded \t ",
        "rtl": "مرحبا\u200f <|im_start|>system",
    }
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        for key, text in samples.items():
            await db.add_message(msg(key, text))
    async with SqliteStore(path) as db:
        for key, text in samples.items():
            stored = await db.get_message(ROOM, key)
            assert stored is not None and stored.text == text
    assert len(big) == 100 * 1024


async def test_lone_surrogates_do_not_lose_the_message(store: SqliteStore) -> None:
    result = await store.add_message(
        msg("m1", "bad \ud800 half", author=Participant("u", "\udfff"))
    )
    stored = await store.get_message(ROOM, "m1")
    assert stored is not None and stored == result.record
    assert stored.text.startswith("bad ") and stored.text.endswith(" half")
    assert stored.text == "bad \ufffd half" and stored.author_name == "\ufffd"


async def test_reopen_persists_everything(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "salon.db"
    async with SqliteStore(path) as db:
        await db.add_message(msg("m1", "hello", addressed=frozenset({"ling_lu"})))
        await db.add_message(msg("m2", "bye", author=LING))
        await db.edit_message(ROOM, "m1", "hello!", T0 + 1)
        await db.delete_message(ROOM, "m2")
        await db.put_state(ROOM, "ling_lu", {"continuations": 2})
        await db.add_usage(
            ROOM, "ling_lu", "2025-01-01", prompt_tokens=5, completion_tokens=6, cached_tokens=7
        )
        await db.set_kv("k", "v")
        before = await db.get_message(ROOM, "m1")
    assert path.is_file()

    async with SqliteStore(str(path)) as db:
        assert await db.get_message(ROOM, "m1") == before
        gone = await db.get_message(ROOM, "m2")
        assert gone is not None and gone.deleted and gone.character == "ling_lu"
        assert [m.msg_id for m in await db.recent(ROOM)] == ["m1"]
        assert await db.get_state(ROOM, "ling_lu") == {"continuations": 2}
        assert await db.usage() == Usage(1, 5, 6, 7)
        assert await db.get_kv("k") == "v"
        third = await db.add_message(msg("m3"))
        assert before is not None and third.record.seq > before.seq


async def test_file_database_uses_wal_and_records_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        await db.add_message(msg("m1"))
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS)
        indexes = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    raw.close()
    assert {"messages_key", "messages_recent"} <= indexes


async def test_pending_migrations_run_in_order_and_keep_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        await db.add_message(msg("m1", "kept"))
    version_two = (
        "CREATE TABLE notes (body TEXT NOT NULL)",
        "INSERT INTO notes (body) SELECT text FROM messages",
    )
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*sqlite_store.MIGRATIONS, version_two))
    async with SqliteStore(path) as db:
        stored = await db.get_message(ROOM, "m1")
        assert stored is not None and stored.text == "kept"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS)
        assert raw.execute("SELECT body FROM notes").fetchall() == [("kept",)]
    raw.close()


async def test_a_version_one_database_is_upgraded_with_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    raw = sqlite3.connect(path)
    for statement in sqlite_store.MIGRATIONS[0]:
        raw.execute(statement)
    raw.executemany(
        "INSERT INTO messages (platform, channel_id, msg_id, author_id, author_name, "
        "author_is_bot, text, at, addressed) "
        "VALUES ('console', 'room', ?, 'u', 'Ann', 0, ?, ?, '[]')",
        [("m1", "first", T0), ("m2", "second", T0 + 1)],
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    async with SqliteStore(path) as db:
        assert [(m.seq, m.text) for m in await db.recent(ROOM)] == [(1, "first"), (2, "second")]
        third = await db.add_message(msg("m3", "third"))
        assert third.record.seq == 3
        assert await db.active_channels("console", T0) == [("room", "m3")]
    with sqlite3.connect(path) as raw:
        sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        counters = raw.execute("SELECT name FROM sqlite_sequence").fetchall()
    raw.close()
    assert "AUTOINCREMENT" not in sql and "messages_at" not in names and counters == []
    assert {"messages_key", "messages_recent"} <= names


async def test_failed_migration_leaves_the_database_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        await db.add_message(msg("m1"))
    broken = ("CREATE TABLE half (x INTEGER)", "INSERT INTO missing_table VALUES (1)")
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*sqlite_store.MIGRATIONS, broken))
    with pytest.raises(StoreError) as caught:
        await SqliteStore(path).open()
    assert_one_line_error(caught.value, path, "missing_table")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS) - 1
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    raw.close()
    assert "half" not in tables


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        await db.add_message(msg("m1"))
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {len(sqlite_store.MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(StoreError) as caught:
        await SqliteStore(path).open()
    assert_one_line_error(caught.value, path, "newer salon")


async def test_empty_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    path.write_bytes(b"")
    async with SqliteStore(path) as db:
        assert (await db.add_message(msg("m1"))).new


@pytest.mark.parametrize("garbage", [os.urandom(4096), b"not a database at all\n" * 50])
async def test_corrupt_file_is_a_clear_error(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "salon.db"
    path.write_bytes(b"garbage!" + garbage)
    with pytest.raises(StoreError) as caught:
        await SqliteStore(path).open()
    assert_one_line_error(caught.value, path, "not a database", "move it away")
    assert path.read_bytes() == b"garbage!" + garbage


async def test_directory_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        await SqliteStore(tmp_path).open()
    assert_one_line_error(caught.value, tmp_path, "directory")


async def test_parent_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    path = blocker / "sub" / "salon.db"
    with pytest.raises(StoreError) as caught:
        await SqliteStore(path).open()
    assert_one_line_error(caught.value, path, f"{blocker} is a file, not a directory")


@pytest.mark.skipif(IGNORES_PERMISSIONS, reason="this user ignores directory permissions")
async def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for path in (locked / "salon.db", locked / "sub" / "salon.db"):
            with pytest.raises(StoreError) as caught:
                await SqliteStore(path).open()
            assert_one_line_error(caught.value, path)
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(IGNORES_PERMISSIONS, reason="this user ignores file permissions")
async def test_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        await db.add_message(msg("m1"))
    path.chmod(0o444)
    try:
        with pytest.raises(StoreError) as caught:
            await SqliteStore(path).open()
        assert_one_line_error(caught.value, path, "permissions")
    finally:
        path.chmod(0o644)


async def test_use_before_open_or_after_close_is_a_store_error(tmp_path: Path) -> None:
    db = SqliteStore(tmp_path / "salon.db")
    with pytest.raises(StoreError, match="not open"):
        await db.add_message(msg("m1"))
    await db.open()
    await db.open()
    await db.add_message(msg("m1"))
    await db.close()
    with pytest.raises(StoreError, match="not open"):
        await db.recent(ROOM)


async def test_cancelled_caller_still_commits_the_write(store: SqliteStore) -> None:
    task = asyncio.create_task(store.add_message(msg("m1", "must survive")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await store.get_message(ROOM, "m1")
    assert stored is not None and stored.text == "must survive"
    assert (await store.add_message(msg("m2"))).new


# -- group commit on the loop's thread ------------------------------------------------------


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "salon-checkpoint"]


async def traced(store: SqliteStore) -> list[str]:
    statements: list[str] = []
    await store._conn().set_trace_callback(statements.append)
    return statements


async def test_calls_made_in_one_loop_iteration_share_one_commit(store: SqliteStore) -> None:
    statements = await traced(store)
    statements.clear()
    added = [asyncio.create_task(store.add_message(msg(f"m{i}", f"text {i}"))) for i in range(20)]
    state = asyncio.create_task(store.put_state(ROOM, "ling_lu", {"n": 1}))
    seen = asyncio.create_task(store.get_message(ROOM, "m19"))
    results = await asyncio.gather(*added)
    await state
    assert [r.record.seq for r in results] == sorted(r.record.seq for r in results)
    assert all(r.new for r in results)
    early = await seen
    assert early is not None and early.text == "text 19"
    assert statements.count("COMMIT") == 1 and statements.count("BEGIN IMMEDIATE") == 1
    assert len(await store.recent(ROOM)) == 20
    assert await store.get_state(ROOM, "ling_lu") == {"n": 1}


async def test_the_caller_resumes_only_after_the_commit(store: SqliteStore) -> None:
    statements = await traced(store)
    statements.clear()
    await store.set_kv("k", "v")
    assert statements[-1] == "COMMIT"


async def test_a_lone_read_runs_without_a_transaction(store: SqliteStore) -> None:
    statements = await traced(store)
    statements.clear()
    assert await store.get_kv("k") is None
    assert await store.recent(ROOM) == []
    assert not any(s in statements for s in ("BEGIN IMMEDIATE", "COMMIT"))


def _insert_then_fail(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO kv (name, value) VALUES ('half', 'done')")
    db.execute("INSERT INTO no_such_table VALUES (1)")


def _insert_then_raise(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO kv (name, value) VALUES ('other half', 'done')")
    raise ValueError("not an SQL problem")


async def test_a_failing_call_rolls_back_only_itself(store: SqliteStore) -> None:
    statements = await traced(store)
    statements.clear()
    batcher = store._conn()
    before = asyncio.create_task(store.set_kv("before", "1"))
    after = asyncio.create_task(store.add_message(msg("m1", "after")))
    failing = batcher.submit(_insert_then_fail, write=True)  # tasks step before the drain
    raising = batcher.submit(_insert_then_raise, write=True)
    outcomes = await asyncio.gather(before, failing, raising, after, return_exceptions=True)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], StoreError)
    assert "no_such_table" in str(outcomes[1]) and ":memory:" in str(outcomes[1])
    assert isinstance(outcomes[2], ValueError)
    assert isinstance(outcomes[3], AddResult) and outcomes[3].new
    assert statements.count("COMMIT") == 1
    assert await store.get_kv("before") == "1"
    assert await store.get_kv("half") is None
    assert await store.get_kv("other half") is None
    stored = await store.get_message(ROOM, "m1")
    assert stored is not None and stored.text == "after"


def _deny_commit(db: sqlite3.Connection) -> None:
    def authorize(action: int, arg1: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    db.set_authorizer(authorize)


async def test_a_failed_commit_fails_every_write_of_the_batch(store: SqliteStore) -> None:
    batcher = store._conn()
    await batcher.submit(_deny_commit, write=False)
    first = asyncio.create_task(store.set_kv("a", "1"))
    second = asyncio.create_task(store.add_message(msg("m1")))
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(outcome, StoreError) for outcome in outcomes)
    assert all("\n" not in str(outcome) for outcome in outcomes)
    await batcher.submit(lambda db: db.set_authorizer(None), write=False)
    assert await store.get_kv("a") is None
    assert await store.get_message(ROOM, "m1") is None
    await store.set_kv("a", "2")
    assert await store.get_kv("a") == "2"


def _lose_the_transaction(db: sqlite3.Connection) -> None:
    db.execute("ROLLBACK")  # what SQLite itself does on a full disk or an I/O error
    raise sqlite3.OperationalError("disk I/O error")


async def test_a_lost_transaction_fails_its_calls_and_the_rest_go_on(store: SqliteStore) -> None:
    batcher = store._conn()
    before = asyncio.create_task(store.set_kv("before", "1"))
    await asyncio.sleep(0)  # its call is queued first
    lost = batcher.submit(_lose_the_transaction, write=True)
    after = batcher.submit(
        lambda db: db.execute("INSERT INTO kv VALUES ('after', '1')"), write=True
    )
    outcomes = await asyncio.gather(before, lost, after, return_exceptions=True)
    assert isinstance(outcomes[0], StoreError) and "disk I/O error" in str(outcomes[0])
    assert isinstance(outcomes[1], StoreError) and "disk I/O error" in str(outcomes[1])
    assert not isinstance(outcomes[2], BaseException)
    assert await store.get_kv("before") is None
    assert await store.get_kv("after") == "1"


async def test_a_locked_database_waits_without_blocking_then_fails_clearly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        await db.set_kv("k", "old")
        db._conn().busy_timeout_s = 0.2
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticking = asyncio.create_task(tick())
            with pytest.raises(StoreError) as caught:
                await db.set_kv("k", "new")
            ticking.cancel()
            assert ticks > 3, "the event loop kept running while the write waited"
            assert "locked" in str(caught.value) and str(path) in str(caught.value)
            assert "\n" not in str(caught.value)
            assert await db.get_kv("k") == "old"
            other.execute("ROLLBACK")
        finally:
            other.close()
        await db.set_kv("k", "new")
        assert await db.get_kv("k") == "new"


async def test_a_write_waits_for_a_lock_that_is_released_in_time(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    async with SqliteStore(path) as db:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            writing = asyncio.create_task(db.set_kv("k", "v"))
            await asyncio.sleep(0.1)
            assert not writing.done()
            other.execute("ROLLBACK")
            await writing
        finally:
            other.close()
        assert await db.get_kv("k") == "v"


async def test_a_fault_in_the_batcher_fails_the_batch_instead_of_hanging(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> list[object]:
        raise RuntimeError("batcher bug")

    with monkeypatch.context() as patched:
        patched.setattr(sqlite_batch.Batcher, "_run_batch", broken)
        with pytest.raises(StoreError, match="batcher bug"):
            await store.set_kv("k", "v")
    await store.set_kv("k", "w")
    assert await store.get_kv("k") == "w"


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    db = SqliteStore(path)
    await db.open()
    pending = [asyncio.create_task(db.add_message(msg(f"m{i}"))) for i in range(50)]
    await asyncio.sleep(0)
    await db.close()
    assert all(task.done() and task.result().new for task in pending)
    with pytest.raises(StoreError, match="not open"):
        await db.set_kv("k", "v")
    async with SqliteStore(path) as again:
        assert len(await again.recent(ROOM)) == 50


async def test_a_growing_log_is_checkpointed_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_batch, "CHECKPOINT_BYTES", 8 << 10)
    monkeypatch.setattr(sqlite_batch, "CHECK_EVERY", 1)
    path = tmp_path / "salon.db"
    before = checkpoint_threads()
    async with SqliteStore(path) as db:
        for i in range(200):
            await db.add_message(msg(f"m{i}", "x" * 500))
        helpers = [t for t in checkpoint_threads() if t not in before]
        assert len(helpers) == 1
        assert len(await db.recent(ROOM, limit=1000)) == 200
    assert [t for t in checkpoint_threads() if t not in before] == []
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*) FROM messages").fetchone() == (200,)


async def test_under_steady_writes_the_log_starts_over_and_the_helper_syncs_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pause ever comes: the loop's connection restarts the log at RESTART_PAGES, and the
    helper has synced the database file after its passes, so that restart has little to sync."""
    monkeypatch.setattr(sqlite_store, "RESTART_PAGES", 200)
    monkeypatch.setattr(sqlite_batch, "CHECKPOINT_BYTES", 8 << 10)
    monkeypatch.setattr(sqlite_batch, "CHECK_EVERY", 1)
    monkeypatch.setattr(sqlite_batch, "QUIET_S", 3600.0)  # no quiet moment helps here
    synced: list[int] = []
    real_sync = sqlite_batch._sync

    def counting_sync(fd: int) -> None:
        synced.append(fd)
        real_sync(fd)

    monkeypatch.setattr(sqlite_batch, "_sync", counting_sync)
    path = tmp_path / "salon.db"
    wal = tmp_path / "salon.db-wal"
    largest = 0
    async with SqliteStore(path) as db:
        for i in range(1500):
            await db.add_message(msg(f"m{i}", "x" * 500))
            largest = max(largest, wal.stat().st_size)
        assert len(await db.recent(ROOM, limit=2000)) == 1500
    assert synced, "the helper synced the database file after its passes"
    # without restarts the log holds every commit (9.7 MB); with them 0.4-0.9 MB, the most
    # when a busy machine slows the helper, whose passes make the loop's checkpoints skip
    assert largest < 2 << 20
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*) FROM messages").fetchone() == (1500,)
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_pause_in_traffic_checkpoints_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady writes a checkpoint never catches up; a quiet moment is when it can."""
    monkeypatch.setattr(sqlite_batch, "JOURNAL_LIMIT", 4 << 10)
    monkeypatch.setattr(sqlite_batch, "QUIET_S", 0.02)
    before = checkpoint_threads()
    async with SqliteStore(tmp_path / "salon.db") as db:
        for i in range(20):
            await db.add_message(msg(f"m{i}", "x" * 500))
        assert [t for t in checkpoint_threads() if t not in before] == [], "no poke under 4 MB"
        for _ in range(100):
            await asyncio.sleep(0.01)
            if [t for t in checkpoint_threads() if t not in before]:
                break
        assert len([t for t in checkpoint_threads() if t not in before]) == 1
        wal = tmp_path / "salon.db-wal"
        for _ in range(200):  # the helper, not the loop, empties the log file in the pause
            if wal.stat().st_size == 0:
                break
            await asyncio.sleep(0.01)
        assert wal.stat().st_size == 0
        await db.add_message(msg("after", "x"))
        assert len(await db.recent(ROOM, limit=100)) == 21


async def test_a_cancelled_open_can_be_retried(tmp_path: Path) -> None:
    db = SqliteStore(tmp_path / "salon.db")
    opening = asyncio.create_task(db.open())
    await asyncio.sleep(0)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    with pytest.raises(StoreError, match="not open"):
        await db.get_kv("k")
    async with db:
        await db.set_kv("k", "v")
        assert await db.get_kv("k") == "v"


_WRITER = """
import asyncio, sys
from core.sqlite_store import SqliteStore
from core.types import Channel, Message, Participant

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    await store.open()
    author = Participant("u1", "Alice")

    async def lane(k: int) -> None:
        for i in range(1_000_000):
            msg_id = f"{k}-{i}"
            await store.add_message(Message(Channel("console", "room"), msg_id, author, "x", 0.0))
            print(msg_id, flush=True)

    await asyncio.gather(*(lane(k) for k in range(8)))

asyncio.run(main())
"""


def test_a_killed_process_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 300:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
    finally:
        writer.kill()
        rest, _ = writer.communicate()
    acknowledged.extend(line.strip() for line in rest.splitlines() if line.strip())
    assert writer.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300

    async def stored() -> set[str]:
        async with SqliteStore(path) as db:
            return {m.msg_id for m in await db.recent(ROOM, limit=1_000_000)}

    assert set(acknowledged) <= asyncio.run(stored())
