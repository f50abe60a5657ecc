"""A dict-backed `Store` with no I/O: the diagnosis runs the engine on it to find its CPU ceiling.

The difference between the engine's rate on this store and on SqliteStore is what storage
costs; the rate on this store is what the orchestrator's own Python work allows. Each call
yields to the loop once, as a SQLite call waits for its batch's commit: a store that never
yields would let a channel's later messages pile up behind one decision and share it, and
the ceiling would count decisions that never ran.
"""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from core.store import AddResult, StoredMessage, Usage
from core.types import Channel, Message

_Key = tuple[str, str]


class MemoryStore:
    """Everything in dicts; same semantics as SqliteStore for what the engine calls."""

    def __init__(self) -> None:
        self._seq = 0
        self._rows: dict[_Key, list[StoredMessage]] = defaultdict(list)
        self._by_id: dict[tuple[str, str, str], StoredMessage] = {}
        self._state: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._usage: dict[tuple[str, str, str, str], Usage] = {}
        self._kv: dict[str, str] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _replace(self, record: StoredMessage) -> StoredMessage:
        key = (record.platform, record.channel_id, record.msg_id)
        self._by_id[key] = record
        rows = self._rows[(record.platform, record.channel_id)]
        for index in range(len(rows) - 1, -1, -1):
            if rows[index].seq == record.seq:
                rows[index] = record
                break
        return record

    async def add_message(self, message: Message) -> AddResult:
        await asyncio.sleep(0)
        channel = message.channel
        key = (channel.platform, channel.id, message.id)
        existing = self._by_id.get(key)
        if existing is not None:
            newly = frozenset(message.addressed) - existing.addressed
            if not newly:
                return AddResult(existing, False, frozenset())
            merged = self._replace(existing._replace(addressed=existing.addressed | newly))
            return AddResult(merged, False, newly)
        self._seq += 1
        author = message.author
        record = StoredMessage(
            seq=self._seq,
            platform=channel.platform,
            channel_id=channel.id,
            msg_id=message.id,
            author_id=author.id,
            author_name=author.name,
            author_is_bot=author.is_bot,
            character=author.character,
            text=message.text,
            at=message.at,
            reply_to=message.reply_to,
            addressed=frozenset(message.addressed),
            deleted=False,
        )
        self._by_id[key] = record
        self._rows[(channel.platform, channel.id)].append(record)
        return AddResult(record, True, frozenset(message.addressed))

    async def edit_message(
        self, channel: Channel, msg_id: str, text: str, at: float
    ) -> StoredMessage | None:
        await asyncio.sleep(0)
        record = self._by_id.get((channel.platform, channel.id, msg_id))
        if record is None:
            return None
        if record.edited_at is None or record.edited_at <= at:
            record = self._replace(record._replace(text=text, edited_at=at))
        return record

    async def delete_message(self, channel: Channel, msg_id: str) -> StoredMessage | None:
        await asyncio.sleep(0)
        record = self._by_id.get((channel.platform, channel.id, msg_id))
        return None if record is None else self._replace(record._replace(deleted=True))

    async def get_message(self, channel: Channel, msg_id: str) -> StoredMessage | None:
        await asyncio.sleep(0)
        return self._by_id.get((channel.platform, channel.id, msg_id))

    async def recent(
        self, channel: Channel, *, after_seq: int = 0, limit: int = 200
    ) -> list[StoredMessage]:
        await asyncio.sleep(0)
        if limit <= 0:
            return []
        out: list[StoredMessage] = []
        for record in reversed(self._rows.get((channel.platform, channel.id), [])):
            if record.seq <= after_seq or len(out) >= limit:
                break
            if not record.deleted:
                out.append(record)
        out.reverse()
        return out

    async def last_message(self, channel: Channel) -> StoredMessage | None:
        await asyncio.sleep(0)
        for record in reversed(self._rows.get((channel.platform, channel.id), [])):
            if not record.deleted:
                return record
        return None

    async def get_state(self, channel: Channel, character: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return copy.deepcopy(self._state.get((channel.platform, channel.id, character), {}))

    async def put_state(self, channel: Channel, character: str, state: Mapping[str, Any]) -> None:
        await asyncio.sleep(0)
        self._state[(channel.platform, channel.id, character)] = copy.deepcopy(dict(state))

    async def put_states(self, states: Sequence[tuple[Channel, str, Mapping[str, Any]]]) -> None:
        await asyncio.sleep(0)
        for channel, character, state in states:
            await self.put_state(channel, character, state)

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
        await asyncio.sleep(0)
        key = (channel.platform, channel.id, character, day)
        old = self._usage.get(key, Usage())
        self._usage[key] = Usage(
            old.requests + 1,
            old.prompt_tokens + prompt_tokens,
            old.completion_tokens + completion_tokens,
            old.cached_tokens + cached_tokens,
        )

    async def usage(
        self,
        *,
        character: str | None = None,
        channel: Channel | None = None,
        day: str | None = None,
    ) -> Usage:
        await asyncio.sleep(0)
        total = Usage()
        for (platform, channel_id, who, when), u in self._usage.items():
            if character is not None and who != character:
                continue
            if channel is not None and (platform, channel_id) != (channel.platform, channel.id):
                continue
            if day is not None and when != day:
                continue
            total = Usage(
                total.requests + u.requests,
                total.prompt_tokens + u.prompt_tokens,
                total.completion_tokens + u.completion_tokens,
                total.cached_tokens + u.cached_tokens,
            )
        return total

    async def get_kv(self, key: str) -> str | None:
        await asyncio.sleep(0)
        return self._kv.get(key)

    async def set_kv(self, key: str, value: str) -> None:
        await asyncio.sleep(0)
        self._kv[key] = value

    async def active_channels(self, platform: str, since: float) -> list[tuple[str, str]]:
        await asyncio.sleep(0)
        found: list[tuple[int, str, str]] = []
        for (p, channel_id), rows in self._rows.items():
            if p == platform and rows and rows[-1].at >= since:
                found.append((rows[-1].seq, channel_id, rows[-1].msg_id))
        return [(channel_id, msg_id) for _, channel_id, msg_id in sorted(found, reverse=True)]
