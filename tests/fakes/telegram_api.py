"""A fake Telegram Bot API server on 127.0.0.1 for tests that run the real python-telegram-bot.

It behaves like api.telegram.org where the adapter depends on it: form-encoded parameters,
`{"ok": …}` envelopes, long-polled `getUpdates` whose offset confirms updates, privacy mode
(bots see only mentions, replies and commands unless they read everything or are admins),
bots never seeing other bots' messages, forum topics, 4096-character limit and injected 429s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]

MAX_TEXT = 4096
_STRING_FIELDS = frozenset(
    {"text", "parse_mode", "action", "caption", "description", "title", "name", "emoji"}
)
_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_]{5,32})\b")
_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{5,32}))?")
_ADMIN_RIGHTS = {
    "can_be_edited": False,
    "is_anonymous": False,
    "can_manage_chat": True,
    "can_delete_messages": True,
    "can_manage_video_chats": True,
    "can_restrict_members": True,
    "can_promote_members": False,
    "can_change_info": True,
    "can_invite_users": True,
    "can_post_stories": False,
    "can_edit_stories": False,
    "can_delete_stories": False,
}


def utf16_len(text: str) -> int:
    """Telegram measures entity offsets in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def auto_entities(text: str) -> list[JSON]:
    """Entities Telegram's server detects by itself: `@username` mentions, a leading command."""
    entities: list[JSON] = []
    command = _COMMAND.match(text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command[0])})
    for match in _MENTION.finditer(text):
        if command and match.start() < command.end():
            continue
        entities.append(
            {
                "type": "mention",
                "offset": utf16_len(text[: match.start()]),
                "length": utf16_len(match[0]),
            }
        )
    return sorted(entities, key=lambda e: e["offset"])


def entity_text(text: str, entity: Mapping[str, Any]) -> str:
    raw = text.encode("utf-16-le")
    start = entity["offset"] * 2
    return raw[start : start + entity["length"] * 2].decode("utf-16-le")


@dataclass
class FakeUser:
    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    is_bot: bool = False

    def to_json(self) -> JSON:
        data: JSON = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.last_name is not None:
            data["last_name"] = self.last_name
        if self.username is not None:
            data["username"] = self.username
        return data


@dataclass
class FakeBot:
    token: str
    user: FakeUser
    can_read_all_group_messages: bool
    updates: list[JSON] = field(default_factory=list)
    confirmed: int = 0
    polls: int = 0
    last_update_id: int = 700_000
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def username(self) -> str:
        assert self.user.username is not None
        return self.user.username

    def pending(self) -> list[JSON]:
        return [u for u in self.updates if u["update_id"] > self.confirmed]


@dataclass
class FakeChat:
    id: int
    type: str
    title: str | None = None
    is_forum: bool = False
    members: set[int] = field(default_factory=set)
    admins: set[int] = field(default_factory=set)
    creator: int | None = None
    owner_bot: int | None = None
    peer: FakeUser | None = None
    messages: dict[int, JSON] = field(default_factory=dict)
    next_message_id: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def to_json(self) -> JSON:
        data: JSON = {"id": self.id, "type": self.type}
        if self.type == "private" and self.peer is not None:
            data["first_name"] = self.peer.first_name
            if self.peer.last_name is not None:
                data["last_name"] = self.peer.last_name
            if self.peer.username is not None:
                data["username"] = self.peer.username
        else:
            data["title"] = self.title or "group"
        if self.is_forum:
            data["is_forum"] = True
        return data


@dataclass(frozen=True)
class Call:
    """One API request as the fake saw it (decoded parameters)."""

    bot: str
    method: str
    params: JSON


@dataclass
class _Failure:
    method: str
    error_code: int
    description: str
    retry_after: int | None
    token: str | None


class FakeTelegramServer:
    """The Bot API subset salon uses, with helpers that play the humans in the chats."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._bots: dict[str, FakeBot] = {}
        self._users: dict[int, FakeUser] = {}
        self._chats: list[FakeChat] = []
        self._ids = itertools.count(1001)
        self._group_ids = itertools.count(1)
        self._failures: list[_Failure] = []
        self._outages: set[str] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.calls: list[Call] = []
        self.url = ""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> FakeTelegramServer:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        addresses = self._runner.addresses
        port = int(addresses[0][1])
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._closing = True
        for bot in self._bots.values():
            bot.wake.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- world setup ----------------------------------------------------------------------

    def add_bot(
        self,
        token: str,
        username: str,
        first_name: str,
        *,
        can_read_all_group_messages: bool = True,
    ) -> FakeBot:
        user = FakeUser(next(self._ids), first_name, username=username, is_bot=True)
        bot = FakeBot(token, user, can_read_all_group_messages)
        self._bots[token] = bot
        self._users[user.id] = user
        return bot

    def add_user(
        self, first_name: str, last_name: str | None = None, username: str | None = None
    ) -> FakeUser:
        user = FakeUser(next(self._ids), first_name, last_name, username)
        self._users[user.id] = user
        return user

    def add_group(
        self,
        title: str,
        *,
        bots: Iterable[FakeBot] = (),
        admins: Iterable[FakeUser | FakeBot] = (),
        creator: FakeUser | None = None,
        forum: bool = False,
        supergroup: bool = True,
    ) -> FakeChat:
        chat = FakeChat(
            id=-1001000000000 - next(self._group_ids) if supergroup else -next(self._group_ids),
            type="supergroup" if supergroup else "group",
            title=title,
            is_forum=forum,
            members={b.id for b in bots},
            admins={a.id if isinstance(a, FakeUser) else a.user.id for a in admins},
            creator=creator.id if creator else None,
        )
        self._chats.append(chat)
        return chat

    def private_chat(self, user: FakeUser, bot: FakeBot) -> FakeChat:
        """The one-to-one chat of `user` with `bot` (Telegram uses the user's id as chat id)."""
        for chat in self._chats:
            if chat.type == "private" and chat.id == user.id and chat.owner_bot == bot.id:
                return chat
        chat = FakeChat(id=user.id, type="private", members={bot.id}, owner_bot=bot.id, peer=user)
        self._chats.append(chat)
        return chat

    def fail_next(
        self,
        method: str,
        *,
        error_code: int = 429,
        description: str | None = None,
        retry_after: int | None = 3,
        bot: FakeBot | None = None,
    ) -> None:
        """Answer the next call of `method` with an error (default: a flood-control 429)."""
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if error_code == 429
                else "Bad Request"
            )
        self._failures.append(
            _Failure(method, error_code, description, retry_after, bot.token if bot else None)
        )

    def outage(self, method: str, *, on: bool = True) -> None:
        """While on, every call of `method` gets a 502 (Telegram unreachable for that call)."""
        if on:
            self._outages.add(method)
        else:
            self._outages.discard(method)

    # --- what humans do -------------------------------------------------------------------

    def create_topic(self, chat: FakeChat, name: str, by: FakeUser) -> int:
        """Open a forum topic; its id is the id of the service message that created it."""
        assert chat.is_forum
        message_id = next(chat.next_message_id)
        message: JSON = {
            "message_id": message_id,
            "from": by.to_json(),
            "chat": chat.to_json(),
            "date": int(self._now()),
            "message_thread_id": message_id,
            "is_topic_message": True,
            "forum_topic_created": {"name": name, "icon_color": 7322096},
        }
        chat.messages[message_id] = message
        return message_id

    def post(
        self,
        chat: FakeChat,
        user: FakeUser,
        text: str,
        *,
        reply_to: int | None = None,
        thread: int | None = None,
        entities: list[JSON] | None = None,
    ) -> JSON:
        """A human writes in a chat; every bot that may see it gets a `message` update."""
        message = self._new_message(chat, user, text, reply_to=reply_to, thread=thread)
        message["entities"] = sorted(
            auto_entities(text) + list(entities or []), key=lambda e: e["offset"]
        )
        if not message["entities"]:
            del message["entities"]
        self._deliver(chat, message, "message")
        return message

    def edit(self, chat: FakeChat, message_id: int, text: str) -> JSON:
        """A human edits an earlier message; bots that saw it get an `edited_message` update."""
        original = chat.messages[message_id]
        message = dict(original)
        message["text"] = text
        message["edit_date"] = int(self._now())
        message["entities"] = auto_entities(text)
        if not message["entities"]:
            del message["entities"]
        chat.messages[message_id] = message
        seen = original.get("_seen_by", set())
        for bot in self._bots.values():
            if bot.id in seen:
                self._enqueue(bot, "edited_message", message)
        self._notify()
        return message

    # --- inspection -----------------------------------------------------------------------

    def sent(self, chat: FakeChat | None = None, bot: FakeBot | None = None) -> list[JSON]:
        """Messages bots posted, oldest first (optionally in one chat, by one bot)."""
        found: list[JSON] = []
        for c in self._chats:
            if chat is not None and c is not chat:
                continue
            for m in c.messages.values():
                if m["from"]["is_bot"] and (bot is None or m["from"]["id"] == bot.id):
                    found.append(_public(m))
        return sorted(found, key=lambda m: (m["chat"]["id"], m["message_id"]))

    def calls_to(self, method: str, bot: FakeBot | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.method == method and (bot is None or c.bot == bot.username)
        ]

    async def wait_for(
        self, predicate: Callable[[], bool], what: str = "condition", timeout: float = 10.0
    ) -> None:
        """Wait (bounded) until `predicate()` holds; re-checked after every request and often."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"fake Telegram: timed out waiting for {what}")
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    # --- internals: world -----------------------------------------------------------------

    def _new_message(
        self,
        chat: FakeChat,
        sender: FakeUser,
        text: str,
        *,
        reply_to: int | None,
        thread: int | None,
    ) -> JSON:
        message_id = next(chat.next_message_id)
        message: JSON = {
            "message_id": message_id,
            "from": sender.to_json(),
            "chat": chat.to_json(),
            "date": int(self._now()),
            "text": text,
        }
        if thread is not None:
            assert chat.is_forum and thread in chat.messages, "unknown forum topic"
            message["message_thread_id"] = thread
            message["is_topic_message"] = True
        replied = chat.messages.get(reply_to) if reply_to is not None else None
        if reply_to is not None and replied is None:
            raise LookupError(f"no message {reply_to} in chat {chat.id}")
        if replied is None and thread is not None:
            replied = chat.messages[thread]
        if replied is not None:
            message["reply_to_message"] = _public(replied, nested=True)
            if chat.type == "supergroup" and not chat.is_forum:
                message["message_thread_id"] = replied.get(
                    "message_thread_id", replied["message_id"]
                )
        chat.messages[message_id] = message
        return message

    def _visible_to(self, bot: FakeBot, chat: FakeChat, message: JSON) -> bool:
        if bot.id not in chat.members or message["from"]["is_bot"]:
            return False
        if chat.type == "private":
            return chat.owner_bot == bot.id
        if bot.can_read_all_group_messages or bot.id in chat.admins:
            return True
        replied = message.get("reply_to_message")
        if replied and replied["from"]["id"] == bot.id and "forum_topic_created" not in replied:
            return True
        text = message.get("text", "")
        for entity in message.get("entities", []):
            if entity["type"] == "text_mention" and entity["user"]["id"] == bot.id:
                return True
            piece = entity_text(text, entity)
            if entity["type"] == "mention" and piece[1:].lower() == bot.username.lower():
                return True
            if entity["type"] == "bot_command":
                target = piece.partition("@")[2]
                if not target or target.lower() == bot.username.lower():
                    return True
        return False

    def _deliver(self, chat: FakeChat, message: JSON, kind: str) -> None:
        seen: set[int] = message.setdefault("_seen_by", set())
        for bot in self._bots.values():
            if self._visible_to(bot, chat, message):
                seen.add(bot.id)
                self._enqueue(bot, kind, message)
        self._notify()

    def _enqueue(self, bot: FakeBot, kind: str, message: JSON) -> None:
        bot.last_update_id += 1
        bot.updates.append({"update_id": bot.last_update_id, kind: _public(message)})
        bot.wake.set()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _find_chat(self, bot: FakeBot, chat_id: Any) -> FakeChat | None:
        for chat in self._chats:
            if chat.id == chat_id and (chat.type != "private" or chat.owner_bot == bot.id):
                return chat
        return None

    # --- internals: HTTP ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        bot = self._bots.get(token)
        if bot is None:
            return _error(401, "Unauthorized")
        params = await _decode(request)
        self.calls.append(Call(bot.username, method, params))
        self._notify()
        if method in self._outages:
            return _error(502, "Bad Gateway")
        for failure in self._failures:
            if failure.method == method and failure.token in (None, token):
                self._failures.remove(failure)
                extra = {"retry_after": failure.retry_after} if failure.retry_after else None
                return _error(failure.error_code, failure.description, extra)
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        try:
            result = await handler(bot, params)
        except _ApiError as exc:
            return _error(exc.code, exc.description)
        self._notify()
        return web.json_response({"ok": True, "result": result})

    async def _api_getMe(self, bot: FakeBot, params: JSON) -> JSON:
        return bot.user.to_json() | {
            "can_join_groups": True,
            "can_read_all_group_messages": bot.can_read_all_group_messages,
            "supports_inline_queries": False,
        }

    async def _api_deleteWebhook(self, bot: FakeBot, params: JSON) -> bool:
        return True

    async def _api_setMyCommands(self, bot: FakeBot, params: JSON) -> bool:
        return True

    async def _api_getUpdates(self, bot: FakeBot, params: JSON) -> list[JSON]:
        bot.polls += 1
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            bot.confirmed = max(bot.confirmed, offset - 1)
            bot.updates = [u for u in bot.updates if u["update_id"] >= offset]
        timeout = float(params.get("timeout") or 0)
        if not bot.pending() and timeout > 0 and not self._closing:
            bot.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bot.wake.wait(), timeout)
        limit = int(params.get("limit") or 100)
        return bot.pending()[:limit]

    async def _api_sendMessage(self, bot: FakeBot, params: JSON) -> JSON:
        chat = self._find_chat(bot, params.get("chat_id"))
        if chat is None:
            raise _ApiError(400, "Bad Request: chat not found")
        if bot.id not in chat.members:
            raise _ApiError(403, "Forbidden: bot is not a member of the supergroup chat")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")
        thread = params.get("message_thread_id")
        if thread is not None and (not chat.is_forum or thread not in chat.messages):
            raise _ApiError(400, "Bad Request: message thread not found")
        reply = params.get("reply_parameters") or {}
        reply_to = reply.get("message_id")
        if reply_to is not None and reply_to not in chat.messages:
            if not reply.get("allow_sending_without_reply"):
                raise _ApiError(400, "Bad Request: message to be replied not found")
            reply_to = None
        message = self._new_message(chat, bot.user, text, reply_to=reply_to, thread=thread)
        return _public(message)

    async def _api_sendChatAction(self, bot: FakeBot, params: JSON) -> bool:
        if self._find_chat(bot, params.get("chat_id")) is None:
            raise _ApiError(400, "Bad Request: chat not found")
        return True

    async def _api_getChatMember(self, bot: FakeBot, params: JSON) -> JSON:
        chat = self._find_chat(bot, params.get("chat_id"))
        user = self._users.get(params.get("user_id", 0))
        if chat is None or user is None:
            raise _ApiError(400, "Bad Request: chat not found")
        if chat.creator == user.id:
            return {"status": "creator", "user": user.to_json(), "is_anonymous": False}
        if user.id in chat.admins:
            return {"status": "administrator", "user": user.to_json(), **_ADMIN_RIGHTS}
        return {"status": "member", "user": user.to_json()}


class _ApiError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _public(message: JSON, *, nested: bool = False) -> JSON:
    data = {k: v for k, v in message.items() if not k.startswith("_")}
    if nested:
        data.pop("reply_to_message", None)
    return data


def _error(code: int, description: str, parameters: JSON | None = None) -> web.Response:
    body: JSON = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


async def _decode(request: web.Request) -> JSON:
    """Bot API parameters: strings arrive raw, everything else JSON-encoded."""
    if request.content_type == "application/json":
        body = await request.json()
        return dict(body) if isinstance(body, dict) else {}
    form = await request.post() if request.can_read_body else {}
    merged: dict[str, Any] = dict(request.query) | {
        k: v for k, v in form.items() if isinstance(v, str)
    }
    params: JSON = {}
    for key, value in merged.items():
        if key in _STRING_FIELDS:
            params[key] = value
            continue
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params
