"""One Discord bot account running one salon character (discord.py 2.x).

Gateway events become core events, handed to the engine in arrival order by one worker;
the engine decides and posts back through `DiscordSender`. After every fresh gateway
session (not a resume) the messages posted while salon was away are fetched and stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands

from adapters.discord_commands import ADMIN_COMMANDS, build_tree
from adapters.discord_sender import NO_MENTIONS, DiscordSender
from adapters.discord_translate import (
    CHAT_TYPES,
    PLATFORM,
    channel_for,
    fallback_name,
    is_allowed,
    mentions_bot,
    parent_id_of,
    readable_text,
    replied_author_id,
    reply_target,
)
from core.clock import Clock, RealClock
from core.errors import StartupError
from core.types import Channel, Delete, Edit, Message, Participant

if TYPE_CHECKING:
    from core.config import Character, DiscordEntry
    from core.engine import Engine

log = logging.getLogger("salon.discord")

PORTAL = "https://discord.com/developers/applications"
BACKFILL_WINDOW_S = 7 * 86_400
BACKFILL_LIMIT = 100
DRAIN_TIMEOUT_S = 10.0
READY_WAIT_S = 30.0
_NAME_CACHE_MAX = 10_000

Job = Callable[[], Awaitable[None]]


class DiscordAdapter:
    """Runs `character` in Discord through the bot account whose token is `token`."""

    def __init__(
        self,
        entry: DiscordEntry,
        character: Character,
        engine: Engine,
        *,
        token: str,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        guild_ready_timeout: float = 2.0,
        identify_delay: float = 5.0,
        backfill_window_s: float = BACKFILL_WINDOW_S,
        backfill_limit: int = BACKFILL_LIMIT,
    ) -> None:
        self.entry = entry
        self.character = character
        self.engine = engine
        self._token = token
        self._clock: Clock = clock or RealClock()
        self._sleep = sleep
        self._guild_ready_timeout = guild_ready_timeout
        self._identify_delay = identify_delay
        self._backfill_window_s = backfill_window_s
        self._backfill_limit = backfill_limit
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._session_ready = asyncio.Event()
        self.online = asyncio.Event()  # connected and caught up (backfill and resume done)
        self._closing = False
        self._names: dict[tuple[int, int], str] = {}
        self.client: discord.Client | None = None
        self.sender: DiscordSender | None = None
        self._tree: app_commands.CommandTree[discord.Client] | None = None

    @property
    def key(self) -> str:
        return self.character.key

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve until `stop` is set, then shut down; StartupError on a fatal refusal."""
        client = _SalonClient(self, **self._client_options())
        self.client = client
        self.sender = DiscordSender(client, max_length=self.entry.max_length, sleep=self._sleep)
        self._tree = build_tree(client, self._on_command)
        worker = asyncio.create_task(self._work(), name=f"discord-{self.key}-worker")
        try:
            async with client:
                await self._login(client)
                await self._serve(client, stop)
        finally:
            await self._drain()
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    def _client_options(self) -> dict[str, Any]:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.typing = False
        intents.dm_typing = False
        return {
            "intents": intents,
            "allowed_mentions": NO_MENTIONS,
            "guild_ready_timeout": self._guild_ready_timeout,
            "chunk_guilds_at_startup": False,
        }

    async def _login(self, client: discord.Client) -> None:
        who = self._who()
        try:
            await client.login(self._token)
        except discord.LoginFailure:
            raise StartupError(
                f"Discord rejected the bot token in ${self.entry.token_env} ({who}); copy a "
                f"fresh one from {PORTAL} → your application → Bot → Reset Token"
            ) from None
        except discord.HTTPException as exc:
            raise StartupError(
                f"Discord answered HTTP {exc.status} while logging in {who}; try again later"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise StartupError(
                f"cannot reach Discord to log in {who} ({type(exc).__name__}); check the network"
            ) from None

    async def _serve(self, client: discord.Client, stop: asyncio.Event) -> None:
        connect = asyncio.create_task(client.connect(reconnect=True))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({connect, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if connect in done:
            stopped.cancel()
            exc = connect.exception()
            if exc is not None:
                raise self._connect_error(exc) from None
            return
        self._closing = True
        await self._drain()
        await client.close()
        with contextlib.suppress(Exception):
            await connect

    def _connect_error(self, exc: BaseException) -> BaseException:
        who = self._who()
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            return StartupError(
                f"Discord refused the gateway connection for {who}: the Message Content intent "
                f"is not enabled. Enable it at {PORTAL} → your application → Bot → Privileged "
                "Gateway Intents → Message Content Intent, save, and start salon again"
            )
        if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
            return StartupError(
                f"Discord rejected the bot token in ${self.entry.token_env} ({who}) at the gateway"
            )
        if isinstance(exc, discord.ConnectionClosed):
            return StartupError(
                f"Discord closed the gateway connection for {who} (close code {exc.code})"
            )
        return exc

    def _who(self) -> str:
        return f"[[discord]] bot = {self.entry.bot!r}"

    async def _drain(self) -> None:
        """Let the worker store what was already received, bounded in time."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT_S)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except Exception:
                log.exception("discord: %s: an event could not be handled", self.key)
            finally:
                self._queue.task_done()

    def _enqueue(self, job: Job) -> None:
        if not self._closing:
            self._queue.put_nowait(job)

    # ------------------------------------------------------------ client hooks
    async def _setup(self) -> None:
        """After login, before the gateway: claim the identity and sync slash commands."""
        user = self._me()
        self.engine.register_identity(PLATFORM, str(user.id), self.key)
        assert self._tree is not None
        try:
            await self._tree.sync()
        except discord.HTTPException as exc:
            log.warning(
                "discord: %s: could not sync slash commands (HTTP %s); they may be outdated",
                self.key,
                exc.status,
            )

    def _on_connect(self) -> None:
        """A fresh session (READY): events sent while away are not replayed, so backfill."""
        self._session_ready.clear()
        self.online.clear()
        self._enqueue(self._backfill)

    def _on_ready(self) -> None:
        self._session_ready.set()
        log.info("discord: %s is online as %s", self.key, self._me())

    def _on_message(self, message: discord.Message) -> None:
        self._enqueue(lambda: self._handle_message(message))

    def _on_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self._enqueue(lambda: self._handle_edit(payload))

    def _on_delete(self, channel_id: int, guild_id: int | None, ids: Sequence[int]) -> None:
        self._enqueue(lambda: self._handle_delete(channel_id, guild_id, ids))

    # ------------------------------------------------------------ translation
    def _me(self) -> discord.ClientUser:
        assert self.client is not None and self.client.user is not None
        return self.client.user

    def _sender(self) -> DiscordSender:
        assert self.sender is not None
        return self.sender

    def _allowed(self, guild_id: int | None, channel_id: int, parent_id: int | None) -> bool:
        return is_allowed(
            self.entry.allowed_guilds,
            self.entry.allowed_channels,
            guild_id=guild_id,
            channel_id=channel_id,
            parent_id=parent_id,
        )

    async def _handle_message(self, message: discord.Message) -> None:
        if message.type not in CHAT_TYPES:
            return
        guild_id = message.guild.id if message.guild is not None else None
        if not self._allowed(guild_id, message.channel.id, parent_id_of(message.channel)):
            return
        channel = channel_for(message.channel.id, guild_id)
        own = message.author.id == self._me().id
        addressed = not own and await self._addresses_me(message, channel)
        event = Message(
            channel=channel,
            id=str(message.id),
            author=await self._participant(message, own=own),
            text=readable_text(message),
            at=message.created_at.timestamp(),
            addressed=frozenset({self.key}) if addressed else frozenset(),
            reply_to=reply_target(message),
        )
        await self.engine.receive(event, via=self.key, sender=self._sender())

    async def _addresses_me(self, message: discord.Message, channel: Channel) -> bool:
        """A DM, an @-mention of the bot or its managed role, or a reply to the bot."""
        if channel.direct:
            return True
        me = self._me().id
        role = message.guild.self_role if message.guild is not None else None
        if mentions_bot(message, me, role.id if role is not None else None):
            return True
        if replied_author_id(message) == me:
            return True
        target = reply_target(message)
        if target is None or isinstance(
            getattr(message.reference, "resolved", None), discord.Message
        ):
            return False
        stored = await self.engine.store.get_message(channel, target)
        return stored is not None and (stored.character == self.key or stored.author_id == str(me))

    async def _participant(self, message: discord.Message, *, own: bool) -> Participant:
        author = message.author
        character = self.key if own else self.engine.character_for(PLATFORM, str(author.id))
        return Participant(
            id=str(author.id),
            name=await self._display_name(message),
            is_bot=author.bot or message.webhook_id is not None,
            character=character,
        )

    async def _display_name(self, message: discord.Message) -> str:
        """Server nickname / display name; history gives Users, so look the member up once."""
        author = message.author
        guild = message.guild
        if isinstance(author, discord.Member) or guild is None or message.webhook_id is not None:
            return author.display_name
        cache_key = (guild.id, author.id)
        if cache_key in self._names:
            return self._names[cache_key]
        member = guild.get_member(author.id)
        if member is None:
            try:
                member = await guild.fetch_member(author.id)
            except (discord.HTTPException, aiohttp.ClientError, OSError):
                member = None
        name = member.display_name if member is not None else fallback_name(author)
        if len(self._names) >= _NAME_CACHE_MAX:
            self._names.clear()
        self._names[cache_key] = name
        return name

    async def _handle_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        if "content" not in payload.data:
            return
        channel = self._event_channel(payload.channel_id, payload.guild_id)
        if channel is None:
            return
        edited = payload.message.edited_at
        at = edited.timestamp() if edited is not None else self._clock.now()
        edit = Edit(channel, str(payload.message_id), readable_text(payload.message), at)
        await self.engine.receive(edit, via=self.key, sender=self._sender())

    async def _handle_delete(
        self, channel_id: int, guild_id: int | None, ids: Sequence[int]
    ) -> None:
        channel = self._event_channel(channel_id, guild_id)
        if channel is None:
            return
        for message_id in ids:
            await self.engine.receive(
                Delete(channel, str(message_id)), via=self.key, sender=self._sender()
            )

    def _event_channel(self, channel_id: int, guild_id: int | None) -> Channel | None:
        assert self.client is not None
        parent = parent_id_of(self.client.get_channel(channel_id))
        if not self._allowed(guild_id, channel_id, parent):
            return None
        return channel_for(channel_id, guild_id)

    # ------------------------------------------------------------------ backfill
    async def _backfill(self) -> None:
        """Store what was posted in recently active channels while away, then let the engine
        decide once per channel (an unanswered mention gets its answer, old chatter is seen)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._session_ready.wait(), READY_WAIT_S)
        try:
            since = self._clock.now() - self._backfill_window_s
            total = 0
            for channel_id, newest in await self.engine.store.active_channels(PLATFORM, since):
                total += await self._backfill_channel(channel_id, newest)
            if total:
                log.info("discord: %s: stored %d message(s) posted while away", self.key, total)
            await self.engine.resume(PLATFORM, via=self.key, sender=self._sender())
        finally:
            self.online.set()

    async def _backfill_channel(self, channel_id: str, newest: str) -> int:
        assert self.client is not None
        if not channel_id.isdigit():
            return 0
        try:
            found = self.client.get_channel(int(channel_id)) or await self.client.fetch_channel(
                int(channel_id)
            )
        except discord.HTTPException:
            return 0  # a channel only another salon bot can see, or gone
        if not isinstance(found, discord.abc.Messageable):
            return 0
        guild = getattr(found, "guild", None)
        guild_id = guild.id if guild is not None else None
        if not self._allowed(guild_id, int(channel_id), parent_id_of(found)):
            return 0
        channel = channel_for(int(channel_id), guild_id)
        mark = await self._backfill_mark(channel, newest)
        try:
            missed = [
                m
                async for m in found.history(
                    limit=self._backfill_limit, after=discord.Object(mark), oldest_first=False
                )
            ]
        except discord.HTTPException as exc:
            log.warning(
                "discord: %s: cannot read the history of %s (HTTP %s)",
                self.key,
                channel.key,
                exc.status,
            )
            return 0
        for message in reversed(missed):
            await self._handle_message(message)
        return len(missed)

    async def _backfill_mark(self, channel: Channel, newest: str) -> int:
        """The newest stored message that came from the gateway: a reply a character posted
        while the gateway was down must not hide the messages before it."""
        recent = await self.engine.store.recent(channel, limit=50)
        ids = [int(r.msg_id) for r in recent if r.character is None and r.msg_id.isdigit()]
        if ids:
            return max(ids)
        return int(newest) if newest.isdigit() else 0

    # ------------------------------------------------------------------ commands
    async def _on_command(self, interaction: discord.Interaction, name: str) -> None:
        channel_id = interaction.channel_id
        if channel_id is None:
            return
        guild_id = interaction.guild_id
        if not self._allowed(guild_id, channel_id, parent_id_of(interaction.channel)):
            await interaction.response.send_message(
                f"{self.character.name} is not active in this channel.", ephemeral=True
            )
            return
        admin = name in ADMIN_COMMANDS and guild_id is not None
        if admin and not interaction.permissions.manage_messages:
            await interaction.response.send_message(
                f"Only members with the Manage Messages permission can use /{name}.",
                ephemeral=True,
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        user = interaction.user
        participant = Participant(str(user.id), user.display_name, user.bot)
        try:
            result = await self.engine.command(
                channel_for(channel_id, guild_id),
                name,
                "",
                via=self.key,
                sender=self._sender(),
                user=participant,
            )
            text = result.text
        except Exception:
            log.exception("discord: %s: /%s failed", self.key, name)
            text = f"/{name} failed; the salon log has the details."
        await interaction.followup.send(
            _clip(text or "Done.", self.entry.max_length),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _SalonClient(discord.Client):
    """A discord.py client whose events go to the adapter."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter

    async def setup_hook(self) -> None:
        await self._adapter._setup()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await self._adapter._sleep(self._adapter._identify_delay)

    async def on_connect(self) -> None:
        self._adapter._on_connect()

    async def on_ready(self) -> None:
        self._adapter._on_ready()

    async def on_message(self, message: discord.Message) -> None:
        self._adapter._on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self._adapter._on_edit(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self._adapter._on_delete(payload.channel_id, payload.guild_id, [payload.message_id])

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        ids = sorted(payload.message_ids)
        self._adapter._on_delete(payload.channel_id, payload.guild_id, ids)
