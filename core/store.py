"""The history store interface: what the orchestrator persists, independent of the database.

SQLite (`core.sqlite_store`) is the embedded default; a PostgreSQL implementation can follow
behind the same Protocol when several processes share one history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from core.errors import StartupError
from core.types import Channel, Message


class StoredMessage(NamedTuple):
    """One message as the store keeps it; `seq` orders messages by arrival across all channels.

    `at` is when the message was posted (an edit keeps it); `edited_at` is the newest edit's time.
    A named tuple: one is built per stored message, three times cheaper than a frozen dataclass.
    """

    seq: int
    platform: str
    channel_id: str
    msg_id: str
    author_id: str
    author_name: str
    author_is_bot: bool
    character: str | None
    text: str
    at: float
    reply_to: str | None
    addressed: frozenset[str]
    deleted: bool
    edited_at: float | None = None


class AddResult(NamedTuple):
    """The outcome of storing a delivery: a redelivery is `new=False` and may add addressees."""

    record: StoredMessage
    new: bool
    newly_addressed: frozenset[str]


@dataclass(frozen=True, slots=True)
class Usage:
    """Summed model usage; what /stats and budgets read."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class StoreError(StartupError):
    """The history database cannot be used; one line naming the path and the fix, no secrets."""


class Store(Protocol):
    """Everything the orchestrator keeps: messages, per-character channel state, usage, settings.

    Every write is committed before its call returns, so an event is stored before it is acted on.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add_message(self, message: Message) -> AddResult:
        """Store a delivered message once per (platform, channel id, message id).

        A duplicate delivery stores nothing new except the union of `addressed`.
        """
        ...

    async def edit_message(
        self, channel: Channel, msg_id: str, text: str, at: float
    ) -> StoredMessage | None:
        """Replace the text of a known message; None when the message is unknown."""
        ...

    async def delete_message(self, channel: Channel, msg_id: str) -> StoredMessage | None:
        """Soft-delete a known message (kept, hidden from `recent`); None when unknown."""
        ...

    async def get_message(self, channel: Channel, msg_id: str) -> StoredMessage | None: ...

    async def recent(
        self, channel: Channel, *, after_seq: int = 0, limit: int = 200
    ) -> list[StoredMessage]:
        """The newest `limit` non-deleted messages with seq > after_seq, oldest first."""
        ...

    async def last_message(self, channel: Channel) -> StoredMessage | None:
        """The newest non-deleted message of the channel."""
        ...

    async def get_state(self, channel: Channel, character: str) -> dict[str, Any]:
        """The character's saved state in the channel; {} when none was saved."""
        ...

    async def put_state(self, channel: Channel, character: str, state: Mapping[str, Any]) -> None:
        """Replace the character's state in the channel with a JSON-serialisable mapping."""
        ...

    async def put_states(self, states: Sequence[tuple[Channel, str, Mapping[str, Any]]]) -> None:
        """`put_state` for many (channel, character) pairs at once, as one atomic write."""
        ...

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
        """Count one model request and its tokens for (channel, character, day)."""
        ...

    async def usage(
        self,
        *,
        character: str | None = None,
        channel: Channel | None = None,
        day: str | None = None,
    ) -> Usage:
        """Usage summed over the rows matching every filter given."""
        ...

    async def get_kv(self, key: str) -> str | None: ...

    async def set_kv(self, key: str, value: str) -> None: ...

    async def active_channels(self, platform: str, since: float) -> list[tuple[str, str]]:
        """(channel id, newest message id) of the platform's channels whose newest message is
        at >= since.

        Newest first; the newest message counts even when deleted (it marks what was seen).
        """
        ...
