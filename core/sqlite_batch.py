"""Group commit on the event loop's thread: the calls of one loop iteration share one transaction.

Store calls are small synchronous functions of the connection. The first call of an iteration
schedules a drain at the end of it; the drain runs every call queued by then in one
transaction and commits before any caller resumes, so a stored event survives a crash the
moment its call returns. Running SQLite on the loop's own thread costs a few microseconds per
statement but no thread hand-off: a worker thread would wait for the interpreter lock after
every statement while the loop is busy, which made store round trips take milliseconds. The
slow part of a WAL database, copying the log back into the file and syncing it, runs on a
helper thread with its own connection; the loop waits for the disk only when the log starts
over, and then only for what the helper has not synced yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from core.store import StoreError

T = TypeVar("T")
log = logging.getLogger("salon.store")

Outcome = tuple[bool, Any]
"""(succeeded, the call's result or the exception to raise in its caller)."""

CHECKPOINT_BYTES = 4 << 20  # copy the WAL back once the log file is this big (SQLite's default)
TRUNCATE_BYTES = 128 << 20  # past this, also empty the log, holding writers off for that moment
JOURNAL_LIMIT = 1 << 20  # in a pause, a log file bigger than this is emptied (by the helper)
QUIET_S = 0.25  # no commit for this long: a good moment to copy the whole log back
CHECK_EVERY = 32  # commits between looks at the WAL's size
BUSY_RETRY_S = 0.002  # the write lock is held elsewhere: try again this much later
CHECKPOINT_WAIT_MS = 2000  # how long the checkpointer waits for a writer to finish


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def not_open(path: str) -> StoreError:
    return StoreError(f"the history database {path} is not open; call open() first")


class _Call(NamedTuple):
    """One store call waiting for the drain; a write runs inside the batch's transaction."""

    fn: Callable[[sqlite3.Connection], Any]
    write: bool
    future: asyncio.Future[Any]


class _Busy(Exception):
    """BEGIN found the database locked by another connection: the batch waits and retries."""


class Batcher:
    """Runs the calls queued during one loop iteration as one batch (one commit if any writes).

    `busy_timeout_s` is how long writes wait, without blocking the loop, for another process
    that holds the database's write lock before they fail.
    """

    def __init__(self, path: str, db: sqlite3.Connection, *, busy_timeout_s: float = 5.0) -> None:
        self._path = path
        self._db = db
        self.busy_timeout_s = busy_timeout_s
        self._pending: list[_Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first call
        self._scheduled = False
        self._busy_since: float | None = None
        self._closing = False
        self._commits = 0
        self._last_commit = 0.0
        self._quiet: asyncio.TimerHandle | None = None
        self._checkpointer = None if path == ":memory:" else _Checkpointer(path)

    def submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> asyncio.Future[T]:
        """Queue `fn(connection)`; the future resolves once its batch is committed."""
        if self._closing:
            raise not_open(self._path)
        loop = self._loop
        if loop is None:  # asking asyncio each time costs a getpid() system call
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Call(fn, write, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return future

    def set_trace_callback(self, callback: Callable[[str], object] | None) -> asyncio.Future[None]:
        """Trace every statement the connection runs (the benchmark counts them)."""
        return self.submit(lambda db: db.set_trace_callback(callback), write=False)

    async def close(self) -> None:
        """Run and commit everything queued, stop the checkpointer, close the connection."""
        self._closing = True
        if self._quiet is not None:
            self._quiet.cancel()
        while self._scheduled or self._pending:
            await asyncio.sleep(0 if self._busy_since is None else BUSY_RETRY_S)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        try:
            await asyncio.to_thread(self._db.close)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(one_line(f"history database {self._path}: {exc}"))

    # -- the drain -------------------------------------------------------------------------------

    def _drain(self) -> None:
        self._scheduled = False
        calls, self._pending = self._pending, []
        if not calls:
            return
        try:
            outcomes = self._run_guarded(calls)
        except _Busy:
            self._wait_for_lock(calls)
            return
        self._busy_since = None
        for call, (ok, value) in zip(calls, outcomes, strict=True):
            if call.future.done():  # the caller was cancelled; its write still happened
                continue
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)
        if any(call.write for call in calls):
            self._committed()

    def _wait_for_lock(self, calls: list[_Call]) -> None:
        """Another connection writes: put the batch back and try again soon, or give up."""
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since >= self.busy_timeout_s:
            self._busy_since = None
            error = self._error(sqlite3.OperationalError("database is locked"))
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(error)
            return
        self._pending[:0] = calls
        self._scheduled = True
        asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._drain)

    def _committed(self) -> None:
        self._commits += 1
        if self._checkpointer is None:
            return
        if self._commits % CHECK_EVERY == 0:
            self._checkpointer.poke_if_large()
        self._last_commit = time.monotonic()
        if self._quiet is None:
            self._quiet = asyncio.get_running_loop().call_later(QUIET_S, self._when_quiet)

    def _when_quiet(self) -> None:
        """Traffic paused: a pass now can copy the whole log, and the log then starts over."""
        self._quiet = None
        if self._checkpointer is None or self._closing:
            return
        left = self._last_commit + QUIET_S - time.monotonic()
        if left > 0:
            self._quiet = asyncio.get_running_loop().call_later(left, self._when_quiet)
        else:
            self._checkpointer.poke_if_large(minimum=JOURNAL_LIMIT, quiet=True)

    def _run_guarded(self, calls: list[_Call]) -> list[Outcome]:
        """A fault outside the calls themselves fails the batch; no caller may wait forever."""
        db = self._db
        try:
            return self._run_batch(calls)
        except _Busy:
            raise
        except Exception as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            return [(False, self._error(exc))] * len(calls)

    def _run_batch(self, calls: list[_Call]) -> list[Outcome]:
        """Run the calls in order; the writes among them are committed together."""
        if not any(call.write for call in calls):
            return [self._attempt(call) for call in calls]
        outcomes: list[Outcome] = []
        dropped: dict[int, Outcome] = {}
        while len(outcomes) < len(calls):
            self._transaction(calls, outcomes, dropped)
        return outcomes

    def _attempt(self, call: _Call) -> Outcome:
        try:
            return True, call.fn(self._db)
        except sqlite3.Error as exc:
            return False, self._error(exc)
        except Exception as exc:
            return False, exc

    def _begin(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                raise _Busy() from exc
            raise

    def _transaction(
        self, calls: list[_Call], outcomes: list[Outcome], dropped: dict[int, Outcome]
    ) -> None:
        """Run calls from len(outcomes) on in one transaction, appending their outcomes.

        A failing call undoes only itself: SQLite undoes a failed statement, and a call that
        fails after it changed rows (rare: the store's own writes are one statement each) has
        the transaction rolled back and run again without it (`dropped`), so the common case
        pays for no savepoints. When the transaction itself is lost (BEGIN or COMMIT fails, or
        SQLite rolls everything back after an I/O error) every call it ran fails, since none of
        their writes is stored; a lost BEGIN fails all that is left.
        """
        db = self._db
        first = len(outcomes)
        begun = False
        try:
            self._begin()
            begun = True
            for index in range(first, len(calls)):
                if index in dropped:
                    outcomes.append(dropped[index])
                    continue
                outcomes.append((False, None))  # it counts as run: a failure from here fails it
                changes = db.total_changes
                ok, value = outcome = self._attempt(calls[index])
                outcomes[-1] = outcome
                if ok:
                    continue
                if not db.in_transaction:
                    raise value
                if db.total_changes != changes:
                    db.execute("ROLLBACK")
                    dropped[index] = outcome
                    del outcomes[first:]
                    return
            db.execute("COMMIT")
        except _Busy:
            if first == 0:
                raise  # nothing ran yet: the whole batch waits for the lock
            error = self._error(sqlite3.OperationalError("database is locked"))
            outcomes[first:] = [(False, error)] * (len(calls) - first)
        except Exception as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            error = exc if isinstance(exc, StoreError) else self._error(exc)
            ran = len(outcomes) if begun else len(calls)
            outcomes[first:] = [(False, error)] * (ran - first)


_sync = getattr(os, "fdatasync", os.fsync)


class _Checkpointer:
    """A thread with its own connection that copies the WAL back into the database file.

    A PASSIVE pass never holds writers up; once a pass catches up between two commits, the
    next writer starts the log over (with one sync of its header, SQLite's rule). Under writes
    that never pause no pass catches up like that: SQLite then skips syncing the database
    file, and the loop connection's own checkpoint (at ~32 MB, see `SqliteStore._configure`)
    had to sync everything copied since, 36-56 ms on the loop (measured). So each pass ends
    with a sync of the database file here, and that checkpoint waits only for the last few
    milliseconds of writes (4-10 ms measured). The loop's connection never cuts the file back,
    since cutting a log of a hundred megabytes held the loop for 50-120 ms (measured); this
    thread empties the file with a TRUNCATE pass in a pause of traffic, or under traffic once
    the log passes TRUNCATE_BYTES. That pass holds writers off for one sync; they wait without
    blocking the loop.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._wal = path + "-wal"
        self._wake = threading.Event()
        self._stopping = False
        self._quiet = False
        self._thread: threading.Thread | None = None

    def poke_if_large(self, minimum: int | None = None, *, quiet: bool = False) -> None:
        """Wake the helper if the log file is past `minimum`; `quiet`: traffic paused."""
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        if size <= (CHECKPOINT_BYTES if minimum is None else minimum):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="salon-checkpoint", daemon=True)
            self._thread.start()
        self._quiet = quiet
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _main(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error as exc:
            log.warning("cannot open %s to checkpoint its log: %s", self._path, exc)
            return
        try:
            file = os.open(self._path, os.O_RDONLY)
        except OSError as exc:
            log.warning("cannot open %s to checkpoint its log: %s", self._path, exc)
            db.close()
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    # (busy, frames in the log, frames copied): a pause with the log all copied
                    # is when emptying the file costs nobody a wait
                    caught_up = self._quiet and row is not None and row[1] == row[2]
                    if row is not None and (caught_up or row[1] * page >= TRUNCATE_BYTES):
                        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    else:  # SQLite syncs the file only when a pass catches up
                        _sync(file)
                except (sqlite3.Error, OSError) as exc:  # the writer goes on; the log just grows
                    log.debug("checkpoint of %s failed: %s", self._path, exc)
        finally:
            os.close(file)
            db.close()
