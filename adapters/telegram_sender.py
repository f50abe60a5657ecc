"""The Telegram `Sender`: posts one piece at a time within flood limits and honours RetryAfter."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta

from telegram import Bot, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning

from adapters.telegram_flood import FloodGate
from adapters.telegram_translate import chat_target
from core.types import Channel, Outgoing, Sent

log = logging.getLogger("salon.telegram")

MAX_MESSAGE = 4096
MAX_RETRIES = 5

# PTB 22 warns inside RetryAfter's own constructor that retry_after will become a timedelta;
# retry_seconds reads both forms, so this one notice is noise on every flood-control error.
warnings.filterwarnings(
    "ignore", message=r".*`retry_after` will be of type", category=PTBDeprecationWarning
)


def retry_seconds(exc: RetryAfter) -> float:
    """RetryAfter's wait in seconds (PTB 22 gives an int, or a timedelta with PTB_TIMEDELTA set)."""
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramSender:
    """What the engine posts through for one bot account."""

    max_length: int = MAX_MESSAGE

    def __init__(
        self,
        bot: Bot,
        *,
        gate: FloodGate | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self._bot = bot
        self._gate = gate or FloodGate()
        self._sleep = sleep
        self._monotonic = monotonic
        self._max_retries = max_retries

    async def send(self, out: Outgoing) -> Sent:
        """Post one piece; a reply quotes `reply_to` and still goes out if that message is gone."""
        chat_id, thread = chat_target(out.channel)
        reply = (
            ReplyParameters(message_id=int(out.reply_to), allow_sending_without_reply=True)
            if out.reply_to and out.reply_to.isdigit()
            else None
        )
        attempt = 0
        while True:
            await self._wait_turn(chat_id, group=not out.channel.direct)
            try:
                message = await self._bot.send_message(
                    chat_id=chat_id,
                    text=out.text,
                    message_thread_id=thread,
                    reply_parameters=reply,
                )
            except RetryAfter as exc:
                attempt += 1
                if attempt > self._max_retries:
                    raise
                wait = retry_seconds(exc)
                log.warning(
                    "telegram flood control in %s: waiting %.0f s before retrying",
                    out.channel.key,
                    wait,
                )
                await self._sleep(wait)
                continue
            return Sent(str(message.message_id), message.date.timestamp())

    async def typing(self, channel: Channel) -> None:
        """One `typing` chat action (Telegram shows it for ~5 s; the engine repeats it)."""
        chat_id, thread = chat_target(channel)
        try:
            await self._bot.send_chat_action(chat_id, ChatAction.TYPING, message_thread_id=thread)
        except TelegramError as exc:
            log.debug("typing in %s failed: %s", channel.key, type(exc).__name__)

    async def _wait_turn(self, chat_id: int, *, group: bool) -> None:
        now = self._monotonic()
        delay = self._gate.book(str(chat_id), group=group, now=now) - now
        if delay > 0:
            await self._sleep(delay)
