"""A fake Discord (REST + gateway websocket) on 127.0.0.1 for discord.py 2.x end-to-end tests.

It keeps a small world (bots, users, guilds, channels, threads, DMs, messages), answers the
REST calls discord.py makes, and speaks enough of the gateway protocol (HELLO, IDENTIFY,
heartbeats, READY, GUILD_CREATE, dispatches, RECONNECT, RESUME) for a real client to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
MESSAGE_CONTENT_INTENT = 1 << 15
MAX_CONTENT = 2000
MANAGE_MESSAGES = 1 << 13
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_JSON = "application/json"


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    token: str | None = None
    message_content_allowed: bool = True

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    members: dict[int, FakeUser] = field(default_factory=dict)
    nicks: dict[int, str] = field(default_factory=dict)
    roles: list[dict[str, Any]] = field(default_factory=list)
    channel_ids: list[int] = field(default_factory=list)

    def role_ids_of(self, user_id: int) -> list[str]:
        return [r["id"] for r in self.roles if r.get("tags", {}).get("bot_id") == str(user_id)]


@dataclass
class FakeChannel:
    id: int
    type: int  # 0 text, 1 DM, 11 public thread
    name: str = ""
    guild_id: int | None = None
    parent_id: int | None = None
    recipients: tuple[int, ...] = ()
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Post:
    """A message a bot created through `POST /channels/{id}/messages`."""

    bot: FakeUser
    channel_id: int
    body: dict[str, Any]
    message: dict[str, Any]


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    via: bool
    is_global: bool
    times: int


@dataclass
class _Session:
    id: str
    bot: FakeUser
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    buffer: list[dict[str, Any]] = field(default_factory=list)
    resumable: bool = True


class FakeDiscord:
    """A loopback Discord. Use `async with FakeDiscord() as fake, fake.patched():`."""

    def __init__(
        self, *, heartbeat_interval_ms: int = 41_250, now: Callable[[], float] = time.time
    ) -> None:
        self._now = now
        self._heartbeat_ms = heartbeat_interval_ms
        self._ids = itertools.count(1)
        self._last_ms = 0
        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.commands: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[RecordedRequest] = []
        self.posts: list[Post] = []
        self.interaction_replies: dict[int, list[dict[str, Any]]] = {}
        self.identify_count: dict[int, int] = {}
        self.resume_count: dict[int, int] = {}
        self.identify_payloads: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._sessions: dict[str, _Session] = {}
        self._interaction_tokens: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._server_closed: set[web.WebSocketResponse] = set()
        # awaited during IDENTIFY, before READY: what happens here is missed by the new session
        self.before_ready: Callable[[FakeUser], Awaitable[None]] | None = None
        self.port = 0

    # ----------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this server, then restore them."""
        import discord.gateway
        import discord.http
        import yarl

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    # ------------------------------------------------------------------ world
    def snowflake(self) -> int:
        ms = max(int(self._now() * 1000), self._last_ms)
        self._last_ms = ms
        return ((ms - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)

    def add_user(self, username: str, *, global_name: str | None = None) -> FakeUser:
        user = FakeUser(self.snowflake(), username, global_name)
        self.users[user.id] = user
        return user

    def add_bot(
        self, username: str, token: str, *, message_content_allowed: bool = True
    ) -> FakeUser:
        bot = FakeUser(
            self.snowflake(),
            username,
            None,
            bot=True,
            token=token,
            message_content_allowed=message_content_allowed,
        )
        self.users[bot.id] = bot
        return bot

    def add_guild(
        self,
        name: str,
        members: list[FakeUser],
        *,
        nicks: dict[int, str] | None = None,
    ) -> FakeGuild:
        guild = FakeGuild(self.snowflake(), name, owner_id=members[0].id)
        guild.roles.append(_role(guild.id, "@everyone", permissions=0x6BFFFFFFFF & ~(1 << 3)))
        for member in members:
            guild.members[member.id] = member
            if member.bot:
                role = _role(self.snowflake(), member.username, permissions=0)
                role["managed"] = True
                role["tags"] = {"bot_id": str(member.id)}
                guild.roles.append(role)
        guild.nicks.update(nicks or {})
        self.guilds[guild.id] = guild
        return guild

    def add_text_channel(self, guild: FakeGuild, name: str) -> FakeChannel:
        channel = FakeChannel(self.snowflake(), 0, name, guild_id=guild.id)
        self.channels[channel.id] = channel
        guild.channel_ids.append(channel.id)
        return channel

    async def add_thread(self, parent: FakeChannel, name: str) -> FakeChannel:
        """A public thread under `parent`; connected bots get THREAD_CREATE."""
        assert parent.guild_id is not None
        thread = FakeChannel(self.snowflake(), 11, name, parent.guild_id, parent_id=parent.id)
        self.channels[thread.id] = thread
        self.guilds[parent.guild_id].channel_ids.append(thread.id)
        payload = self._channel_payload(thread) | {"newly_created": True}
        await self._dispatch_to_channel(thread, "THREAD_CREATE", payload)
        return thread

    def dm_channel(self, bot: FakeUser, user: FakeUser) -> FakeChannel:
        for channel in self.channels.values():
            if channel.type == 1 and set(channel.recipients) == {bot.id, user.id}:
                return channel
        channel = FakeChannel(self.snowflake(), 1, recipients=(bot.id, user.id))
        self.channels[channel.id] = channel
        return channel

    # ---------------------------------------------------------------- payloads
    def _iso(self, ts: float | None = None) -> str:
        return datetime.fromtimestamp(self._now() if ts is None else ts, UTC).isoformat()

    def _member_payload(
        self, guild: FakeGuild, user: FakeUser, *, with_user: bool
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "nick": guild.nicks.get(user.id),
            "roles": guild.role_ids_of(user.id),
            "joined_at": self._iso(0),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "avatar": None,
            "pending": False,
        }
        if with_user:
            data["user"] = user.payload()
        return data

    def _channel_payload(self, channel: FakeChannel) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(channel.id), "type": channel.type}
        last = channel.messages[-1]["id"] if channel.messages else None
        data["last_message_id"] = last
        if channel.type == 1:
            data["recipients"] = [
                self.users[u].payload() for u in channel.recipients if not self.users[u].bot
            ]
            return data
        data |= {
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "rate_limit_per_user": 0,
            "parent_id": str(channel.parent_id) if channel.parent_id else None,
            "topic": None,
        }
        if channel.type == 11:
            guild = self.guilds[channel.guild_id or 0]
            data |= {
                "owner_id": str(guild.owner_id),
                "member_count": 1,
                "message_count": len(channel.messages),
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": self._iso(),
                    "locked": False,
                },
            }
        return data

    def _guild_payload(self, guild: FakeGuild) -> dict[str, Any]:
        channels = [self.channels[c] for c in guild.channel_ids]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "owner_id": str(guild.owner_id),
            "unavailable": False,
            "member_count": len(guild.members),
            "large": False,
            "features": [],
            "roles": guild.roles,
            "emojis": [],
            "stickers": [],
            "channels": [self._channel_payload(c) for c in channels if c.type != 11],
            "threads": [self._channel_payload(c) for c in channels if c.type == 11],
            "members": [
                self._member_payload(guild, u, with_user=True) for u in guild.members.values()
            ],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": self._iso(0),
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_flags": 0,
        }

    def _message_payload(
        self,
        channel: FakeChannel,
        author: FakeUser,
        content: str,
        *,
        reply_to: int | None = None,
        attachments: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        mentions = []
        for raw in _USER_MENTION.findall(content):
            user = self.users.get(int(raw))
            if user is not None and user not in mentions:
                mentions.append(user)
        guild = self.guilds.get(channel.guild_id or 0)
        data: dict[str, Any] = {
            "id": str(self.snowflake()),
            "channel_id": str(channel.id),
            "author": author.payload(),
            "content": content,
            "timestamp": self._iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": "@everyone" in content or "@here" in content,
            "mention_roles": _ROLE_MENTION.findall(content),
            "attachments": [self._attachment(name) for name in attachments],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if guild is not None:
            data["guild_id"] = str(guild.id)
            data["member"] = self._member_payload(guild, author, with_user=False)
            data["mentions"] = [
                u.payload() | {"member": self._member_payload(guild, u, with_user=False)}
                for u in mentions
                if u.id in guild.members
            ]
        else:
            data["mentions"] = [u.payload() for u in mentions]
        if reply_to is not None:
            ref = self.find_message(channel, reply_to)
            data["type"] = 19
            data["message_reference"] = {
                "type": 0,
                "message_id": str(reply_to),
                "channel_id": str(channel.id),
                "guild_id": str(channel.guild_id) if channel.guild_id else None,
            }
            data["referenced_message"] = (
                {k: v for k, v in ref.items() if k != "referenced_message"} if ref else None
            )
        return data

    def _attachment(self, filename: str) -> dict[str, Any]:
        url = f"{self.url}/attachments/{filename}"
        return {
            "id": str(self.snowflake()),
            "filename": filename,
            "size": 1,
            "url": url,
            "proxy_url": url,
        }

    def find_message(self, channel: FakeChannel, message_id: int) -> dict[str, Any] | None:
        for message in channel.messages:
            if int(message["id"]) == message_id:
                return message
        return None

    # --------------------------------------------------------- human actions
    async def post(
        self,
        channel: FakeChannel,
        author: FakeUser,
        content: str,
        *,
        reply_to: int | None = None,
        attachments: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A user (or a foreign bot) posts: stored, then MESSAGE_CREATE to bots that see it."""
        data = self._message_payload(
            channel, author, content, reply_to=reply_to, attachments=attachments
        )
        channel.messages.append(data)
        await self._dispatch_to_channel(channel, "MESSAGE_CREATE", data)
        await self._notify()
        return data

    async def edit(self, channel: FakeChannel, message_id: int, content: str) -> dict[str, Any]:
        message = self.find_message(channel, message_id)
        assert message is not None, "unknown message"
        message["content"] = content
        message["edited_timestamp"] = self._iso()
        await self._dispatch_to_channel(channel, "MESSAGE_UPDATE", dict(message))
        await self._notify()
        return message

    async def delete(self, channel: FakeChannel, message_id: int) -> None:
        message = self.find_message(channel, message_id)
        assert message is not None, "unknown message"
        channel.messages.remove(message)
        payload: dict[str, Any] = {"id": str(message_id), "channel_id": str(channel.id)}
        if channel.guild_id:
            payload["guild_id"] = str(channel.guild_id)
        await self._dispatch_to_channel(channel, "MESSAGE_DELETE", payload)
        await self._notify()

    async def slash(
        self,
        bot: FakeUser,
        channel: FakeChannel,
        user: FakeUser,
        name: str,
        *,
        manage_messages: bool = False,
    ) -> int:
        """A user runs `/name` of `bot`: INTERACTION_CREATE to that bot; the interaction id."""
        interaction_id = self.snowflake()
        token = f"itoken{interaction_id}"
        self._interaction_tokens[token] = interaction_id
        self.interaction_replies[interaction_id] = []
        command = next((c for c in self.commands.get(bot.id, []) if c["name"] == name), None)
        data: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(bot.id),
            "type": 2,
            "token": token,
            "version": 1,
            "data": {
                "id": command["id"] if command else str(self.snowflake()),
                "name": name,
                "type": 1,
                "options": [],
            },
            "channel_id": str(channel.id),
            "channel": self._channel_payload(channel),
            "app_permissions": str(0x6BFFFFFFFF),
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 8_388_608,
        }
        guild = self.guilds.get(channel.guild_id or 0)
        if guild is not None:
            perms = 0x400 | 0x800 | (MANAGE_MESSAGES if manage_messages else 0)
            member = self._member_payload(guild, user, with_user=True)
            data |= {
                "guild_id": str(guild.id),
                "guild_locale": "en-US",
                "member": member | {"permissions": str(perms)},
                "authorizing_integration_owners": {"0": str(guild.id)},
                "context": 0,
            }
        else:
            data |= {
                "user": user.payload(),
                "authorizing_integration_owners": {"1": str(user.id)},
                "context": 1,
            }
        await self._dispatch_to_bot(bot, "INTERACTION_CREATE", data)
        return interaction_id

    # -------------------------------------------------------------- inspection
    def sent(self, channel: FakeChannel | None = None, bot: FakeUser | None = None) -> list[Post]:
        """Messages bots created, oldest first, optionally for one channel and/or one bot."""
        return [
            p
            for p in self.posts
            if (channel is None or p.channel_id == channel.id)
            and (bot is None or p.bot.id == bot.id)
        ]

    def typing_calls(self, channel: FakeChannel) -> int:
        path = f"/channels/{channel.id}/typing"
        return sum(1 for r in self.requests if r.method == "POST" and r.path == path)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait (bounded) until `predicate()` holds; re-checked on every change."""

        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def connected(self, bot: FakeUser) -> bool:
        return any(
            s.bot.id == bot.id and s.ws is not None and not s.ws.closed
            for s in self._sessions.values()
        )

    # ------------------------------------------------------------------ faults
    def fail(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        retry_after: float = 0.01,
        via: bool = True,
        is_global: bool = False,
        times: int = 1,
    ) -> None:
        """The next `times` matching REST calls get `status` (429s with Discord's body)."""
        self._faults.append(
            _Fault(method, re.compile(path_regex), status, retry_after, via, is_global, times)
        )

    # ------------------------------------------------------------ gateway ctl
    async def reconnect(self, bot: FakeUser) -> None:
        """Send op 7 RECONNECT: the client should come back with RESUME."""
        for session in self._live_sessions(bot):
            assert session.ws is not None
            await session.ws.send_str(json.dumps({"op": 7, "d": None}))

    async def drop(self, bot: FakeUser) -> None:
        """Close the bot's socket abnormally (4000): the client should RESUME."""
        for session in self._live_sessions(bot):
            assert session.ws is not None
            self._server_closed.add(session.ws)
            await session.ws.close(code=4000)

    async def invalidate(self, bot: FakeUser) -> None:
        """End the bot's sessions and drop its socket: the RESUME fails and it must IDENTIFY."""
        for session in self._sessions.values():
            if session.bot.id == bot.id:
                session.resumable = False
        await self.drop(bot)

    def _live_sessions(self, bot: FakeUser) -> list[_Session]:
        return [
            s
            for s in self._sessions.values()
            if s.bot.id == bot.id and s.ws is not None and not s.ws.closed
        ]

    # ---------------------------------------------------------------- dispatch
    def bots_seeing(self, channel: FakeChannel) -> list[FakeUser]:
        if channel.type == 1:
            return [self.users[u] for u in channel.recipients if self.users[u].bot]
        guild = self.guilds[channel.guild_id or 0]
        return [u for u in guild.members.values() if u.bot]

    async def _dispatch_to_channel(
        self, channel: FakeChannel, event: str, data: dict[str, Any]
    ) -> None:
        for bot in self.bots_seeing(channel):
            await self._dispatch_to_bot(bot, event, data)

    async def _dispatch_to_bot(self, bot: FakeUser, event: str, data: dict[str, Any]) -> None:
        for session in list(self._sessions.values()):
            if session.bot.id != bot.id or not session.resumable:
                continue
            session.seq += 1
            frame = {"op": 0, "s": session.seq, "t": event, "d": data}
            session.buffer.append(frame)
            if session.ws is not None and not session.ws.closed:
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await session.ws.send_str(json.dumps(frame))

    # ----------------------------------------------------------------- gateway
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _Session | None = None
        try:
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self._heartbeat_ms}})
            )
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op = frame.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    session = await self._identify(ws, frame["d"])
                elif op == 6:
                    session = await self._resume(ws, frame["d"])
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                # a client closing with 1000/1001 ends its session, as on Discord
                if ws.close_code in (1000, 1001) and ws not in self._server_closed:
                    session.resumable = False
            self._server_closed.discard(ws)
            await self._notify()
        return ws

    def _bot_by_token(self, token: str) -> FakeUser | None:
        return next((u for u in self.users.values() if u.bot and u.token == token), None)

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        self.identify_payloads.append(data)
        bot = self._bot_by_token(data.get("token", ""))
        if bot is None:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if data.get("intents", 0) & MESSAGE_CONTENT_INTENT and not bot.message_content_allowed:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        self.identify_count[bot.id] = self.identify_count.get(bot.id, 0) + 1
        if self.before_ready is not None:
            await self.before_ready(bot)
        session = _Session(f"session{self.snowflake()}", bot, ws=ws)
        self._sessions[session.id] = session
        guilds = [g for g in self.guilds.values() if bot.id in g.members]
        ready = {
            "v": 10,
            "user": bot.payload() | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(bot.id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self._send_event(session, "READY", ready)
        for guild in guilds:
            await self._send_event(session, "GUILD_CREATE", self._guild_payload(guild))
        await self._notify()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        session = self._sessions.get(data.get("session_id", ""))
        bot = self._bot_by_token(data.get("token", ""))
        if session is None or bot is None or session.bot.id != bot.id or not session.resumable:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return None
        self.resume_count[bot.id] = self.resume_count.get(bot.id, 0) + 1
        session.ws = ws
        client_seq = int(data.get("seq") or 0)
        for frame in session.buffer:
            if frame["s"] > client_seq:
                await ws.send_str(json.dumps(frame))
        await self._send_event(session, "RESUMED", {})
        await self._notify()
        return session

    async def _send_event(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": 0, "s": session.seq, "t": event, "d": data}
        session.buffer.append(frame)
        assert session.ws is not None
        await session.ws.send_str(json.dumps(frame))

    # -------------------------------------------------------------------- REST
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record = RecordedRequest(
            request.method,
            path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        self.requests.append(record)
        try:
            fault = self._take_fault(request.method, path)
            if fault is not None:
                return self._fault_response(fault)
            if path.startswith("/interactions/") or path.startswith("/webhooks/"):
                return await self._interaction_rest(request.method, path, body)
            bot = self._bot_by_token(record.headers.get("authorization", "").removeprefix("Bot "))
            if bot is None:
                return _json({"message": "401: Unauthorized", "code": 0}, status=401)
            return await self._route(bot, request.method, path, dict(request.query), body)
        finally:
            await self._notify()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.method == method and fault.pattern.fullmatch(path):
                fault.times -= 1
                return fault
        return None

    def _fault_response(self, fault: _Fault) -> web.Response:
        headers = {"Via": "1.1 google"} if fault.via else {}
        if fault.status == 429:
            headers |= {
                "Retry-After": str(max(1, round(fault.retry_after))),
                "X-RateLimit-Scope": "global" if fault.is_global else "user",
            }
            body = {
                "message": "You are being rate limited.",
                "retry_after": fault.retry_after,
                "global": fault.is_global,
            }
            return _json(body, status=429, headers=headers)
        return _json({"message": f"fault {fault.status}", "code": 0}, status=fault.status)

    async def _route(
        self, bot: FakeUser, method: str, path: str, query: dict[str, str], body: Any
    ) -> web.StreamResponse:
        if method == "GET" and path == "/users/@me":
            return _json(bot.payload() | {"verified": True, "mfa_enabled": False})
        if method == "GET" and path == "/oauth2/applications/@me":
            return _json(self._application(bot))
        if m := re.fullmatch(r"/applications/(\d+)/commands", path):
            if method == "PUT":
                self.commands[bot.id] = [self._command(c, m.group(1)) for c in body]
            return _json(self.commands.get(bot.id, []))
        if m := re.fullmatch(r"/channels/(\d+)(/.*)?", path):
            channel = self.channels.get(int(m.group(1)))
            if channel is None or bot not in self.bots_seeing(channel):
                return _json({"message": "Unknown Channel", "code": 10003}, status=404)
            return await self._channel_route(bot, channel, method, m.group(2) or "", query, body)
        if m := re.fullmatch(r"/guilds/(\d+)/members/(\d+)", path):
            guild = self.guilds.get(int(m.group(1)))
            user_id = int(m.group(2))
            if guild is None or user_id not in guild.members:
                return _json({"message": "Unknown Member", "code": 10007}, status=404)
            return _json(self._member_payload(guild, guild.members[user_id], with_user=True))
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def _command(self, sent: dict[str, Any], app_id: str) -> dict[str, Any]:
        """A synced command as Discord returns it (permissions as a string)."""
        perms = sent.get("default_member_permissions")
        return sent | {
            "id": str(self.snowflake()),
            "application_id": app_id,
            "version": str(self.snowflake()),
            "default_member_permissions": None if perms is None else str(perms),
        }

    def _application(self, bot: FakeUser) -> dict[str, Any]:
        return {
            "id": str(bot.id),
            "name": bot.username,
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": next(u for u in self.users.values() if not u.bot).payload()
            if any(not u.bot for u in self.users.values())
            else bot.payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "bot": bot.payload(),
        }

    async def _channel_route(
        self,
        bot: FakeUser,
        channel: FakeChannel,
        method: str,
        rest: str,
        query: dict[str, str],
        body: Any,
    ) -> web.StreamResponse:
        if method == "GET" and rest == "":
            return _json(self._channel_payload(channel))
        if method == "POST" and rest == "/typing":
            return web.Response(status=204)
        if method == "GET" and rest == "/messages":
            return _json(self._history(channel, query))
        if method == "GET" and (m := re.fullmatch(r"/messages/(\d+)", rest)):
            found = self.find_message(channel, int(m.group(1)))
            if found is None:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            return _json(found)
        if method == "POST" and rest == "/messages":
            return await self._create_message(bot, channel, body)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def _history(self, channel: FakeChannel, query: dict[str, str]) -> list[dict[str, Any]]:
        limit = int(query.get("limit", "50"))
        ordered = sorted(channel.messages, key=lambda m: int(m["id"]))
        if "before" in query:
            older = [m for m in ordered if int(m["id"]) < int(query["before"])]
            page = older[-limit:]
        elif "after" in query:
            newer = [m for m in ordered if int(m["id"]) > int(query["after"])]
            page = newer[:limit]
        else:
            page = ordered[-limit:]
        return [_without_member(m) for m in reversed(page)]

    async def _create_message(
        self, bot: FakeUser, channel: FakeChannel, body: Any
    ) -> web.StreamResponse:
        content = body.get("content") or ""
        if len(content) > MAX_CONTENT:
            return _json(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}},
                },
                status=400,
            )
        reference = body.get("message_reference") or {}
        reply_to = reference.get("message_id")
        if reply_to is not None and self.find_message(channel, int(reply_to)) is None:
            if reference.get("fail_if_not_exists", True):
                return _json({"message": "Unknown message", "code": 50035}, status=400)
            reply_to = None
        data = self._message_payload(
            channel, bot, content, reply_to=int(reply_to) if reply_to else None
        )
        if body.get("nonce") is not None:
            data["nonce"] = body["nonce"]
        self.posts.append(Post(bot, channel.id, body, data))
        channel.messages.append(data)
        await self._dispatch_to_channel(channel, "MESSAGE_CREATE", data)
        return _json(data)

    async def _interaction_rest(self, method: str, path: str, body: Any) -> web.StreamResponse:
        if m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            interaction_id = int(m.group(1))
            if self._interaction_tokens.get(m.group(2)) != interaction_id:
                return _json({"message": "Unknown interaction", "code": 10062}, status=404)
            self.interaction_replies[interaction_id].append(body)
            data = body.get("data") or {}
            flags = int(data.get("flags", 0))
            result: dict[str, Any] = {
                "interaction": {
                    "id": str(interaction_id),
                    "type": 2,
                    "response_message_loading": body["type"] == 5,
                    "response_message_ephemeral": bool(flags & 64),
                }
            }
            return _json(result)
        if m := re.fullmatch(r"/webhooks/(\d+)/([^/]+)(/messages/@original)?", path):
            known = self._interaction_tokens.get(m.group(2))
            if known is None:
                return _json({"message": "Unknown Webhook", "code": 10015}, status=404)
            self.interaction_replies[known].append(body)
            bot = self.users[int(m.group(1))]
            message = {
                "id": str(self.snowflake()),
                "channel_id": "0",
                "author": bot.payload(),
                "content": (body or {}).get("content", ""),
                "timestamp": self._iso(),
                "edited_timestamp": None,
                "tts": False,
                "mention_everyone": False,
                "mentions": [],
                "mention_roles": [],
                "attachments": [],
                "embeds": [],
                "pinned": False,
                "type": 20,
                "flags": int((body or {}).get("flags", 0)),
                "webhook_id": m.group(1),
            }
            return _json(message)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def interaction_texts(self, interaction_id: int) -> list[str]:
        """Every text the bot showed for an interaction (callback, follow-ups, edits)."""
        texts = []
        for body in self.interaction_replies.get(interaction_id, []):
            data = body.get("data", body) if isinstance(body, dict) else {}
            if isinstance(data, dict) and data.get("content"):
                texts.append(str(data["content"]))
        return texts


def _role(role_id: int, name: str, *, permissions: int) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "color": 0,
        "hoist": False,
        "position": 0,
        "permissions": str(permissions),
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def _without_member(message: dict[str, Any]) -> dict[str, Any]:
    """REST message objects carry no `member`, unlike gateway MESSAGE_CREATE."""
    out = {k: v for k, v in message.items() if k != "member"}
    out["mentions"] = [
        {k: v for k, v in u.items() if k != "member"} for u in message.get("mentions", [])
    ]
    return out


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """discord.py parses a body as JSON only when Content-Type is exactly application/json."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers=(headers or {}) | {"Content-Type": _JSON},
    )
