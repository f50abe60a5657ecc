"""Telegram adapter: one bot account runs one character in groups, forum topics and private chats.

Updates are long-polled with `Bot.get_updates` directly (not PTB's Updater, which confirms
updates before they are handled): an update is confirmed to Telegram — by asking for the next
offset — only after `engine.receive` has stored it, so a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from telegram import Bot, BotCommand, Update
from telegram.constants import ChatMemberStatus
from telegram.error import Conflict, InvalidToken, RetryAfter, TelegramError

from adapters.telegram_flood import FloodGate, FloodLimits
from adapters.telegram_sender import TelegramSender, retry_seconds
from adapters.telegram_translate import (
    PLATFORM,
    BotIdentity,
    Deliver,
    OpenDirect,
    RunCommand,
    Skip,
    route,
)
from core.errors import StartupError
from core.text import split_message
from core.types import Outgoing

if TYPE_CHECKING:
    from core.config import Character, TelegramEntry
    from core.engine import Engine

log = logging.getLogger("salon.telegram")

OFFICIAL_API = "https://api.telegram.org"
POLL_TIMEOUT_S = 30
ALLOWED_UPDATES = ("message", "edited_message")
MAX_ATTEMPTS = 5
MAX_BACKOFF_S = 30.0
MENU = (
    BotCommand("why", "why the character spoke or stayed silent"),
    BotCommand("stats", "tokens and cost"),
    BotCommand("regen", "replace the last reply (admins)"),
    BotCommand("reset", "forget the conversation so far (admins)"),
    BotCommand("mute", "silence the character here (admins)"),
    BotCommand("unmute", "let the character speak again (admins)"),
    BotCommand("help", "what the commands do"),
)
ADMIN_STATUSES = frozenset({ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER})

Sleep = Callable[[float], Awaitable[None]]


def redact(text: str, token: str) -> str:
    """Remove a bot token (and its secret half) from text headed for a log or an error."""
    if not token:
        return text
    secret = token.partition(":")[2]
    text = text.replace(token, "[token]")
    return text.replace(secret, "[token]") if len(secret) >= 8 else text


def quiet_http_logs() -> None:
    """httpx logs every URL at INFO and PTB logs the API URL at DEBUG; both contain the token."""
    for name, level in (("httpx", logging.WARNING), ("httpcore", logging.WARNING)):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)
    ptb = logging.getLogger("telegram")
    if ptb.getEffectiveLevel() < logging.INFO:
        ptb.setLevel(logging.INFO)


class TelegramAdapter:
    """One Telegram bot account running one salon character."""

    def __init__(
        self,
        entry: TelegramEntry,
        character: Character,
        engine: Engine,
        *,
        token: str,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        poll_timeout: int = POLL_TIMEOUT_S,
        flood: FloodLimits | None = None,
    ) -> None:
        self.entry = entry
        self.character = character
        self.engine = engine
        self._token = token
        self._sleep = sleep
        self._monotonic = monotonic
        self._poll_timeout = poll_timeout
        self._flood = flood
        self.identity: BotIdentity | None = None
        self.sender: TelegramSender | None = None
        self._offset: int | None = None
        self._confirmed: int | None = None
        self._failures: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def api_root(self) -> str:
        return self.entry.base_url or OFFICIAL_API

    @property
    def key(self) -> str:
        return self.character.key

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve until `stop` is set, confirm what was handled, and shut down."""
        quiet_http_logs()
        bot = Bot(
            self._token,
            base_url=f"{self.api_root}/bot",
            base_file_url=f"{self.api_root}/file/bot",
        )
        try:
            sender = await self._start(bot)
            await self._poll(bot, sender, stop)
            await self._confirm(bot)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await bot.shutdown()
            log.info("telegram: %s stopped", self.key)

    # ----- start-up ------------------------------------------------------------------------

    async def _start(self, bot: Bot) -> TelegramSender:
        try:
            await bot.initialize()
        except InvalidToken:
            hint = (
                f", or check base_url = {self.api_root!r}: it must be a Bot API server root"
                if self.entry.base_url
                else ""
            )
            raise StartupError(
                f"telegram ({self.key}): the bot token in ${self.entry.token_env} was rejected; "
                f"copy it again from @BotFather (/mybots → API Token){hint}"
            ) from None
        except TelegramError as exc:
            raise StartupError(
                f"telegram ({self.key}): cannot reach the Bot API at {self.api_root}: "
                f"{redact(str(exc), self._token)}"
            ) from None
        me = bot.bot
        self.identity = BotIdentity(me.id, me.username or "", self.key)
        if not me.can_read_all_group_messages:
            log.warning(
                "telegram: @%s (%s) has privacy mode on, so in groups it only sees mentions, "
                "replies to it and commands. To let it follow the conversation, send /setprivacy "
                "to @BotFather, pick the bot, choose Disable, then remove and re-add it to each "
                "group (or make it a group admin).",
                me.username,
                self.key,
            )
        try:
            await bot.delete_webhook(drop_pending_updates=False)
            await bot.set_my_commands(MENU)
        except TelegramError as exc:
            log.warning(
                "telegram (%s): setup call failed: %s", self.key, redact(str(exc), self._token)
            )
        self.engine.register_identity(PLATFORM, str(me.id), self.key)
        sender = TelegramSender(
            bot, gate=FloodGate(self._flood), sleep=self._sleep, monotonic=self._monotonic
        )
        self.sender = sender
        resumed = await self.engine.resume(PLATFORM, via=self.key, sender=sender)
        log.info("telegram: @%s runs %s (%d channels resumed)", me.username, self.key, resumed)
        return sender

    # ----- polling -------------------------------------------------------------------------

    async def _poll(self, bot: Bot, sender: TelegramSender, stop: asyncio.Event) -> None:
        backoff = 0.0
        while not stop.is_set():
            try:
                updates = await self._fetch(bot, stop)
            except InvalidToken:
                raise StartupError(
                    f"telegram ({self.key}): the bot token in ${self.entry.token_env} "
                    "stopped working (revoked?); get a new one from @BotFather"
                ) from None
            except RetryAfter as exc:
                await self._pause(retry_seconds(exc), stop)
                continue
            except TelegramError as exc:
                backoff = min(MAX_BACKOFF_S, backoff * 2 or 1.0)
                reason = (
                    "another process is polling this bot, or a webhook is set"
                    if isinstance(exc, Conflict)
                    else redact(str(exc), self._token)
                )
                log.warning("telegram (%s): getUpdates failed (%s); retrying", self.key, reason)
                await self._pause(backoff, stop)
                continue
            if updates is None:
                return
            backoff = 0.0
            for update in updates:
                if not await self._handle_safely(bot, sender, update):
                    attempts = self._failures.get(update.update_id, 1)
                    await self._pause(min(MAX_BACKOFF_S, 2.0 ** (attempts - 1)), stop)
                    break
                self._offset = update.update_id + 1

    async def _fetch(self, bot: Bot, stop: asyncio.Event) -> tuple[Update, ...] | None:
        """One long poll that also confirms every update below the offset; None once stopped."""
        offset = self._offset
        fetch = asyncio.ensure_future(
            bot.get_updates(
                offset=offset, timeout=self._poll_timeout, allowed_updates=ALLOWED_UPDATES
            )
        )
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({fetch, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, TelegramError):
                    await fetch
        if fetch.cancelled():
            return None
        updates = fetch.result()
        self._confirmed = offset
        return updates

    async def _confirm(self, bot: Bot) -> None:
        """Tell Telegram the last handled offset on a clean stop, so a restart starts after it."""
        if self._offset is None or self._offset == self._confirmed:
            return
        try:
            await bot.get_updates(offset=self._offset, timeout=0, limit=1)
            self._confirmed = self._offset
        except TelegramError as exc:
            log.warning("telegram (%s): final confirm failed: %s", self.key, type(exc).__name__)

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    # ----- handling ------------------------------------------------------------------------

    async def _handle_safely(self, bot: Bot, sender: TelegramSender, update: Update) -> bool:
        """Handle one update; False = not handled, poll it again (it stays unconfirmed)."""
        try:
            await self.handle(bot, sender, update)
        except Exception:
            attempts = self._failures.get(update.update_id, 0) + 1
            self._failures[update.update_id] = attempts
            if attempts >= MAX_ATTEMPTS:
                log.exception(
                    "telegram (%s): giving up on update %d after %d attempts",
                    self.key,
                    update.update_id,
                    attempts,
                )
                self._failures.pop(update.update_id, None)
                return True
            log.exception("telegram (%s): update %d failed; will retry", self.key, update.update_id)
            return False
        self._failures.pop(update.update_id, None)
        return True

    async def handle(self, bot: Bot, sender: TelegramSender, update: Update) -> None:
        """Translate one update and hand it to the engine; returns once it is persisted."""
        assert self.identity is not None
        action = route(
            update,
            self.identity,
            character_for=lambda uid: self.engine.character_for(PLATFORM, uid),
            allowed_chats=self.entry.allowed_chats,
        )
        if isinstance(action, Deliver):
            await self.engine.receive(action.event, via=self.key, sender=sender)
        elif isinstance(action, OpenDirect):
            await self.engine.open_direct(action.channel, via=self.key, sender=sender)
        elif isinstance(action, RunCommand):
            await self._command(bot, sender, action)
        elif isinstance(action, Skip):
            log.debug(
                "telegram (%s): update %d skipped: %s", self.key, update.update_id, action.reason
            )

    async def _command(self, bot: Bot, sender: TelegramSender, cmd: RunCommand) -> None:
        if cmd.needs_admin and not await self._is_admin(bot, cmd.chat_id, cmd.user_id):
            await self._reply(sender, cmd, f"Only chat administrators can use /{cmd.name} here.")
            return
        if cmd.name == "regen":
            self._spawn(self._run_command(sender, cmd))
        else:
            await self._run_command(sender, cmd)

    async def _run_command(self, sender: TelegramSender, cmd: RunCommand) -> None:
        result = await self.engine.command(
            cmd.channel, cmd.name, cmd.args, via=self.key, sender=sender, user=cmd.user
        )
        await self._reply(sender, cmd, result.text)

    async def _reply(self, sender: TelegramSender, cmd: RunCommand, text: str) -> None:
        """Show a command's answer; a failed send is logged, never retried (the command ran)."""
        for i, piece in enumerate(split_message(text, sender.max_length)):
            try:
                await sender.send(Outgoing(cmd.channel, piece, cmd.message_id if i == 0 else None))
            except TelegramError as exc:
                log.warning(
                    "telegram (%s): could not answer /%s in %s: %s",
                    self.key,
                    cmd.name,
                    cmd.channel.key,
                    redact(str(exc), self._token),
                )
                return

    async def _is_admin(self, bot: Bot, chat_id: int, user_id: int) -> bool:
        try:
            member = await bot.get_chat_member(chat_id, user_id)
        except TelegramError as exc:
            log.warning("telegram (%s): admin check failed: %s", self.key, type(exc).__name__)
            return False
        return member.status in ADMIN_STATUSES

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("telegram (%s): background command failed", self.key)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
