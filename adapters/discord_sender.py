"""The Discord `Sender`: post one piece with no pings allowed, show typing, ride out 429s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import discord

from core.types import Channel, Outgoing, Sent

log = logging.getLogger("salon.discord")

# A character may notify the person it answers, never @everyone, a role or arbitrary users.
REPLY_MENTIONS = discord.AllowedMentions(
    everyone=False, users=False, roles=False, replied_user=True
)
NO_MENTIONS = discord.AllowedMentions.none()
DEFAULT_RETRY_S = 1.0
MAX_RETRY_S = 300.0


class DiscordSender:
    """Posts through one bot account's discord.py client.

    discord.py already retries a well-formed 429 (JSON body + `Via` header) and 5xx; this
    adds bounded retries, with the injected sleep, for the 429s it gives up on.
    """

    def __init__(
        self,
        client: discord.Client,
        *,
        max_length: int = 2000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempts: int = 5,
    ) -> None:
        self.max_length = max_length
        self._client = client
        self._sleep = sleep
        self._attempts = max(1, attempts)

    async def send(self, out: Outgoing) -> Sent:
        target = self._client.get_partial_messageable(int(out.channel.id))
        delay = 0.0
        for attempt in range(1, self._attempts + 1):
            try:
                message = await self._post(target, out)
            except discord.HTTPException as exc:
                if exc.status != 429:
                    raise
                delay = retry_after_of(exc)
            else:
                return Sent(str(message.id), message.created_at.timestamp())
            if attempt < self._attempts:
                log.warning(
                    "discord: rate limited posting in %s; retrying in %.2f s",
                    out.channel.key,
                    delay,
                )
                await self._sleep(delay)
        raise SendRateLimited(out.channel, delay)

    async def _post(self, target: discord.PartialMessageable, out: Outgoing) -> discord.Message:
        if out.reply_to is None or not out.reply_to.isdigit():
            return await target.send(out.text, allowed_mentions=NO_MENTIONS)
        reference = target.get_partial_message(int(out.reply_to)).to_reference(
            fail_if_not_exists=False
        )
        return await target.send(out.text, reference=reference, allowed_mentions=REPLY_MENTIONS)

    async def typing(self, channel: Channel) -> None:
        try:
            await self._client.http.send_typing(int(channel.id))
        except discord.HTTPException as exc:
            log.debug("discord: typing in %s failed (HTTP %s)", channel.key, exc.status)


class SendRateLimited(Exception):
    """Discord kept answering 429 for one piece after every retry."""

    def __init__(self, channel: Channel, retry_after: float) -> None:
        super().__init__(
            f"Discord kept rate-limiting posts in {channel.key} (retry_after {retry_after:.1f} s)"
        )
        self.retry_after = retry_after


def retry_after_of(exc: discord.HTTPException) -> float:
    """Seconds to wait from a 429 discord.py did not retry: the `Retry-After` header, bounded."""
    raw = exc.response.headers.get("Retry-After") if exc.response is not None else None
    try:
        value = float(raw) if raw is not None else DEFAULT_RETRY_S
    except ValueError:
        value = DEFAULT_RETRY_S
    return min(max(value, 0.0), MAX_RETRY_S)
