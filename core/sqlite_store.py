"""The embedded history store: one SQLite file, WAL mode, versioned schema, group commit.

Each store call is a small synchronous function of the connection, run by `core.sqlite_batch`:
the calls made during one event-loop iteration share one transaction, committed before any
caller resumes. Opening (integrity check, migrations) runs on a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from core.sqlite_batch import Batcher, not_open, one_line
from core.store import AddResult, StoredMessage, StoreError, Usage
from core.types import Channel, Message

T = TypeVar("T")

MEMORY = ":memory:"
RESTART_PAGES = 32768  # ~33 MB of log (1 KB pages): the loop connection checkpoints, restarts it

# Ordered schema migrations; migration N (1-based) brings `PRAGMA user_version` from N-1 to N.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            author_id TEXT NOT NULL,
            author_name TEXT NOT NULL,
            author_is_bot INTEGER NOT NULL,
            character TEXT,
            text TEXT NOT NULL,
            at REAL NOT NULL,
            edited_at REAL,
            reply_to TEXT,
            addressed TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX messages_key ON messages (platform, channel_id, msg_id)",
        "CREATE INDEX messages_recent ON messages (platform, channel_id, seq)",
        "CREATE INDEX messages_at ON messages (platform, at)",
        """CREATE TABLE channel_state (
            platform TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            character TEXT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (platform, channel_id, character)
        )""",
        """CREATE TABLE usage_daily (
            platform TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            character TEXT NOT NULL,
            day TEXT NOT NULL,
            requests INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            PRIMARY KEY (platform, channel_id, character, day)
        )""",
        """CREATE TABLE kv (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ),
    # 2: each message cost five B-tree writes; three is enough. AUTOINCREMENT wrote its counter
    # row on every insert (rows are never deleted, so plain rowids grow the same way), and the
    # time index served only the start-up look for recent channels, which uses messages_recent.
    (
        """CREATE TABLE messages_v2 (
            seq INTEGER PRIMARY KEY,
            platform TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            author_id TEXT NOT NULL,
            author_name TEXT NOT NULL,
            author_is_bot INTEGER NOT NULL,
            character TEXT,
            text TEXT NOT NULL,
            at REAL NOT NULL,
            edited_at REAL,
            reply_to TEXT,
            addressed TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        )""",
        "INSERT INTO messages_v2 SELECT seq, platform, channel_id, msg_id, author_id, author_name, "
        "author_is_bot, character, text, at, edited_at, reply_to, addressed, deleted FROM messages",
        "DROP TABLE messages",
        "ALTER TABLE messages_v2 RENAME TO messages",
        "CREATE UNIQUE INDEX messages_key ON messages (platform, channel_id, msg_id)",
        "CREATE INDEX messages_recent ON messages (platform, channel_id, seq)",
    ),
)
SCHEMA: tuple[str, ...] = tuple(statement for step in MIGRATIONS for statement in step)
"""Every migration in order: what a new database runs (the benchmark's floor uses it too)."""

_FIX = "set [storage] path"
_COLUMNS = (
    "seq, platform, channel_id, msg_id, author_id, author_name, author_is_bot, character, "
    "text, at, reply_to, addressed, deleted, edited_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM messages"
_BY_KEY = " WHERE platform = ? AND channel_id = ? AND msg_id = ?"
_PUT_STATE = (
    "INSERT INTO channel_state (platform, channel_id, character, state) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (platform, channel_id, character) DO UPDATE SET state = excluded.state"
)


def _storable(text: str) -> str:
    """Lone surrogates (possible in decoded JSON) cannot be UTF-8; everything else is kept as is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text


_NOBODY = "[]"
_STATE_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # one, not one per state


def _encode_addressed(addressed: Iterable[str]) -> str:
    names = sorted(addressed)
    return _STATE_JSON.encode(names) if names else _NOBODY  # json.dumps(...) builds an encoder


def _decode_addressed(encoded: str) -> frozenset[str]:
    return frozenset() if encoded == _NOBODY else frozenset(json.loads(encoded))


def _record(row: Iterable[Any]) -> StoredMessage:
    (
        seq,
        platform,
        channel_id,
        msg_id,
        author_id,
        author_name,
        author_is_bot,
        character,
        text,
        at,
        reply_to,
        addressed,
        deleted,
        edited_at,
    ) = row
    return StoredMessage(
        seq=int(seq),
        platform=platform,
        channel_id=channel_id,
        msg_id=msg_id,
        author_id=author_id,
        author_name=author_name,
        author_is_bot=bool(author_is_bot),
        character=character,
        text=text,
        at=float(at),
        reply_to=reply_to,
        addressed=_decode_addressed(addressed),
        deleted=bool(deleted),
        edited_at=None if edited_at is None else float(edited_at),
    )


def _sqlite_fix(exc: sqlite3.Error) -> str:
    """The advice that goes with an SQLite failure at open time."""
    message = str(exc).lower()
    if "locked" in message or "busy" in message:
        return f"another program is using it; stop that program or {_FIX}"
    if isinstance(exc, sqlite3.OperationalError):
        return f"check the permissions of the file and its directory, or {_FIX}"
    return f"move it away or {_FIX}"


def _close_quietly(connecting: asyncio.Future[sqlite3.Connection]) -> None:
    """An open that was cancelled while connecting: close what it opened."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


def _version(db: sqlite3.Connection) -> int:
    row = db.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row is not None else 0


def _fetch_record(
    db: sqlite3.Connection, where: str, params: Iterable[Any]
) -> StoredMessage | None:
    row = db.execute(_SELECT + where, tuple(params)).fetchone()
    return None if row is None else _record(row)


def _fetch_records(db: sqlite3.Connection, sql: str, params: Iterable[Any]) -> list[StoredMessage]:
    return [_record(row) for row in db.execute(sql, tuple(params)).fetchall()]


class SqliteStore:
    """The `Store` on one SQLite file or ":memory:"; missing directories are created on open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._memory = os.fspath(path) == MEMORY
        self._path = Path(MEMORY) if self._memory else Path(os.fspath(path)).expanduser().absolute()
        self._batcher: Batcher | None = None
        self._lock = asyncio.Lock()

    @property
    def path(self) -> str:
        return MEMORY if self._memory else str(self._path)

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- opening (on a thread) ------------------------------------------------------------------

    def _open_error(self, reason: str) -> StoreError:
        return StoreError(one_line(f"cannot open the history database {self.path}: {reason}"))

    def _prepare_path(self) -> None:
        """Create missing directories and name the common path problems before SQLite does."""
        path = self._path
        if path.is_dir():
            raise self._open_error(f"it is a directory; {_FIX} to a file name")
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((p for p in (parent, *parent.parents) if p.exists()), parent)
            raise self._open_error(f"{blocker} is a file, not a directory; {_FIX}") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise self._open_error(
                f"cannot create the directory {parent} ({reason}); create it or {_FIX}"
            ) from None
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                raise self._open_error(
                    f"the file is not readable and writable by this user; "
                    f"fix its permissions or {_FIX}"
                )
        elif not os.access(parent, os.W_OK | os.X_OK):
            raise self._open_error(
                f"the directory {parent} is not writable; fix its permissions or {_FIX}"
            )

    async def open(self) -> None:
        """Connect, set WAL, bring the schema up to date and prove it writable (on a thread)."""
        async with self._lock:
            if self._batcher is not None:
                return
            connecting = asyncio.ensure_future(asyncio.to_thread(self._connect))
            try:
                db = await asyncio.shield(connecting)
            except asyncio.CancelledError:
                connecting.add_done_callback(_close_quietly)
                raise
            self._batcher = Batcher(self.path, db)

    def _connect(self) -> sqlite3.Connection:
        if not self._memory:
            self._prepare_path()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._open_error(f"{exc}; {_sqlite_fix(exc)}") from None
        try:
            self._configure(db)
            self._check_integrity(db)
            self._migrate(db)
            # from now on a locked database is waited for by the batcher, never in a call
            db.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error as exc:
            db.close()
            raise self._open_error(f"{exc}; {_sqlite_fix(exc)}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _configure(self, db: sqlite3.Connection) -> None:
        if not self._memory:
            # small pages: every commit rewrites its touched pages into the log, and messages
            # of many channels touch many pages (1 KB pages write a third of 4 KB ones)
            db.execute("PRAGMA page_size=1024")
            db.execute("PRAGMA journal_mode=WAL")
            # a helper thread checkpoints and syncs; under writes that never pause its passes
            # never end between two commits, so at this size this connection checkpoints what
            # is left, and the log starts over (see core.sqlite_batch._Checkpointer)
            db.execute(f"PRAGMA wal_autocheckpoint={RESTART_PAGES}")
            db.execute("PRAGMA journal_size_limit=-1")  # the checkpointer empties the log
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")

    def _check_integrity(self, db: sqlite3.Connection) -> None:
        """`PRAGMA quick_check` at start-up: a damaged file is one clear error now, not a
        failure at the first reply (after a model request was paid for)."""
        rows = db.execute("PRAGMA quick_check(1)").fetchall()
        if rows and rows[0][0] != "ok":
            raise self._open_error(f"database disk image is malformed ({rows[0][0]}); {_FIX}")

    def _check_known(self, version: int) -> None:
        known = len(MIGRATIONS)
        if version > known:
            raise self._open_error(
                f"it was written by a newer salon (schema version {version}, this salon knows "
                f"up to {known}); upgrade salon or {_FIX}"
            )

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Apply the pending migrations in one transaction; rewriting user_version probes writes."""
        self._check_known(_version(db))
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _version(db)
            self._check_known(version)
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {max(version, len(MIGRATIONS))}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Run and commit every queued call, then close; closing twice is harmless."""
        async with self._lock:
            batcher, self._batcher = self._batcher, None
            if batcher is not None:
                await batcher.close()

    # -- running operations --------------------------------------------------------------------

    def _conn(self) -> Batcher:
        """The open batcher (the only way to the connection), or StoreError."""
        if self._batcher is None:
            raise not_open(self.path)
        return self._batcher

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return self._conn().submit(fn, write=False)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `fn` as one atomic, committed write; a cancelled caller does not undo it."""
        return self._conn().submit(fn, write=True)

    # -- messages ------------------------------------------------------------------------------

    async def add_message(self, message: Message) -> AddResult:
        channel = message.channel
        author = message.author
        key = (channel.platform, channel.id, message.id)
        text = _storable(message.text)
        name = _storable(author.name)
        # "" for NULL (NULLIF below): the sqlite3 module binds None through its adapter lookup,
        # two failed attribute lookups per None, on every message
        params = (
            *key,
            author.id,
            name,
            int(author.is_bot),
            author.character or "",
            text,
            message.at,
            message.reply_to or "",
            _encode_addressed(message.addressed),
        )

        def run(db: sqlite3.Connection) -> AddResult:
            cursor = db.execute(
                "INSERT INTO messages (platform, channel_id, msg_id, author_id, author_name, "
                "author_is_bot, character, text, at, reply_to, addressed, deleted) "
                "VALUES (?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?, NULLIF(?, ''), ?, 0) "
                "ON CONFLICT (platform, channel_id, msg_id) DO NOTHING",
                params,
            )
            seq = cursor.lastrowid
            if cursor.rowcount == 1 and seq is not None:
                record = StoredMessage(
                    seq=seq,
                    platform=channel.platform,
                    channel_id=channel.id,
                    msg_id=message.id,
                    author_id=author.id,
                    author_name=name,
                    author_is_bot=author.is_bot,
                    character=author.character or None,
                    text=text,
                    at=message.at,
                    reply_to=message.reply_to or None,
                    addressed=frozenset(message.addressed),
                    deleted=False,
                )
                return AddResult(record, True, frozenset(message.addressed))
            existing = _fetch_record(db, _BY_KEY, key)
            if existing is None:
                raise StoreError(f"history database {self.path}: message {key} vanished")
            newly = frozenset(message.addressed) - existing.addressed
            if not newly:
                return AddResult(existing, False, frozenset())
            merged = existing.addressed | newly
            db.execute(
                "UPDATE messages SET addressed = ?" + _BY_KEY, (_encode_addressed(merged), *key)
            )
            return AddResult(existing._replace(addressed=merged), False, newly)

        return await self._write(run)

    async def edit_message(
        self, channel: Channel, msg_id: str, text: str, at: float
    ) -> StoredMessage | None:
        key = (channel.platform, channel.id, msg_id)
        stored = _storable(text)

        def run(db: sqlite3.Connection) -> StoredMessage | None:
            db.execute(
                "UPDATE messages SET text = ?, edited_at = ?"
                + _BY_KEY
                + " AND (edited_at IS NULL OR edited_at <= ?)",
                (stored, at, *key, at),
            )
            return _fetch_record(db, _BY_KEY, key)

        return await self._write(run)

    async def delete_message(self, channel: Channel, msg_id: str) -> StoredMessage | None:
        key = (channel.platform, channel.id, msg_id)

        def run(db: sqlite3.Connection) -> StoredMessage | None:
            db.execute("UPDATE messages SET deleted = 1" + _BY_KEY, key)
            return _fetch_record(db, _BY_KEY, key)

        return await self._write(run)

    async def get_message(self, channel: Channel, msg_id: str) -> StoredMessage | None:
        key = (channel.platform, channel.id, msg_id)
        return await self._read(lambda db: _fetch_record(db, _BY_KEY, key))

    async def recent(
        self, channel: Channel, *, after_seq: int = 0, limit: int = 200
    ) -> list[StoredMessage]:
        if limit <= 0:
            return []
        sql = (
            f"SELECT {_COLUMNS} FROM ({_SELECT} WHERE platform = ? AND channel_id = ? "
            "AND deleted = 0 AND seq > ? ORDER BY seq DESC LIMIT ?) AS newest ORDER BY seq"
        )
        params = (channel.platform, channel.id, after_seq, limit)
        return await self._read(lambda db: _fetch_records(db, sql, params))

    async def last_message(self, channel: Channel) -> StoredMessage | None:
        where = " WHERE platform = ? AND channel_id = ? AND deleted = 0 ORDER BY seq DESC LIMIT 1"
        params = (channel.platform, channel.id)
        return await self._read(lambda db: _fetch_record(db, where, params))

    async def active_channels(self, platform: str, since: float) -> list[tuple[str, str]]:
        # one index probe per channel (a skip scan of messages_recent), not a scan of history
        sql = (
            "WITH RECURSIVE ch(id) AS ("
            "SELECT (SELECT channel_id FROM messages WHERE platform = :p "
            "ORDER BY channel_id LIMIT 1) "
            "UNION ALL SELECT (SELECT channel_id FROM messages WHERE platform = :p "
            "AND channel_id > ch.id ORDER BY channel_id LIMIT 1) FROM ch WHERE ch.id IS NOT NULL) "
            "SELECT m.channel_id, m.msg_id FROM ch JOIN messages m ON m.seq = ("
            "SELECT seq FROM messages WHERE platform = :p AND channel_id = ch.id "
            "ORDER BY seq DESC LIMIT 1) "
            "WHERE m.at >= :since ORDER BY m.seq DESC"
        )

        def run(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = db.execute(sql, {"p": platform, "since": since}).fetchall()
            return [(str(row[0]), str(row[1])) for row in rows]

        return await self._read(run)

    # -- channel state -------------------------------------------------------------------------

    async def get_state(self, channel: Channel, character: str) -> dict[str, Any]:
        params = (channel.platform, channel.id, character)

        def run(db: sqlite3.Connection) -> dict[str, Any]:
            row = db.execute(
                "SELECT state FROM channel_state "
                "WHERE platform = ? AND channel_id = ? AND character = ?",
                params,
            ).fetchone()
            if row is None:
                return {}
            state = json.loads(row[0])
            return state if isinstance(state, dict) else {}

        return await self._read(run)

    async def put_state(self, channel: Channel, character: str, state: Mapping[str, Any]) -> None:
        await self.put_states([(channel, character, state)])

    async def put_states(self, states: Sequence[tuple[Channel, str, Mapping[str, Any]]]) -> None:
        rows = [
            (
                channel.platform,
                channel.id,
                character,
                _STATE_JSON.encode(state if type(state) is dict else dict(state)),
            )
            for channel, character, state in states
        ]

        def run(db: sqlite3.Connection) -> None:
            db.executemany(_PUT_STATE, rows)

        if rows:
            await self._write(run)

    # -- usage ---------------------------------------------------------------------------------

    async def add_usage(
        self,
        channel: Channel,
        character: str,
        day: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
    ) -> None:
        params = (
            channel.platform,
            channel.id,
            character,
            day,
            int(prompt_tokens),
            int(completion_tokens),
            int(cached_tokens),
        )

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO usage_daily (platform, channel_id, character, day, requests, "
                "prompt_tokens, completion_tokens, cached_tokens) VALUES (?, ?, ?, ?, 1, ?, ?, ?) "
                "ON CONFLICT (platform, channel_id, character, day) DO UPDATE SET "
                "requests = usage_daily.requests + 1, "
                "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
                "cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens",
                params,
            )

        await self._write(run)

    async def usage(
        self,
        *,
        character: str | None = None,
        channel: Channel | None = None,
        day: str | None = None,
    ) -> Usage:
        conditions: list[str] = []
        params: list[Any] = []
        if character is not None:
            conditions.append("character = ?")
            params.append(character)
        if channel is not None:
            conditions.append("platform = ? AND channel_id = ?")
            params.extend((channel.platform, channel.id))
        if day is not None:
            conditions.append("day = ?")
            params.append(day)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = (
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0) "
            "FROM usage_daily" + where
        )

        def run(db: sqlite3.Connection) -> Usage:
            row = db.execute(sql, tuple(params)).fetchone()
            if row is None:
                return Usage()
            return Usage(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

        return await self._read(run)

    # -- key/value -----------------------------------------------------------------------------

    async def get_kv(self, key: str) -> str | None:
        def run(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM kv WHERE name = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(run)

    async def set_kv(self, key: str, value: str) -> None:
        params = (key, _storable(value))

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO kv (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params,
            )

        await self._write(run)
