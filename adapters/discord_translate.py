"""Pure translation from discord.py objects to salon's boundary types (no I/O here)."""

from __future__ import annotations

import re
from collections.abc import Collection

import discord

from core.types import Channel

PLATFORM = "discord"
# Human chat lines; joins, pins, slash-command echoes and other system messages are skipped.
CHAT_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})

_USER = re.compile(r"<@!?([0-9]{15,20})>")
_ROLE = re.compile(r"<@&([0-9]{15,20})>")
_CHANNEL = re.compile(r"<#([0-9]{15,20})>")
_EMOJI = re.compile(r"<a?:([A-Za-z0-9_~]{1,32}):[0-9]{15,20}>")


def channel_for(channel_id: int, guild_id: int | None) -> Channel:
    """A guild channel or thread is a group channel; a DM (no guild) is direct."""
    return Channel(PLATFORM, str(channel_id), direct=guild_id is None)


def is_allowed(
    allowed_guilds: Collection[int],
    allowed_channels: Collection[int],
    *,
    guild_id: int | None,
    channel_id: int,
    parent_id: int | None = None,
) -> bool:
    """Allowlists narrow guild channels (a thread passes through its parent); DMs always pass."""
    if guild_id is None:
        return True
    if allowed_guilds and guild_id not in allowed_guilds:
        return False
    if allowed_channels:
        return channel_id in allowed_channels or (
            parent_id is not None and parent_id in allowed_channels
        )
    return True


def parent_id_of(channel: object) -> int | None:
    """The parent channel id of a thread, else None."""
    parent = getattr(channel, "parent_id", None)
    return parent if isinstance(parent, int) else None


def readable_text(message: discord.Message) -> str:
    """The content as a reader sees it: `<@id>` becomes `@Name`, `<#id>` `#name`, files noted.

    Mentions of unknown ids stay raw; nothing else is altered.
    """
    users = {u.id: u.display_name for u in message.mentions}
    roles = {r.id: r.name for r in message.role_mentions}
    channels = {c.id: getattr(c, "name", "") for c in message.channel_mentions}

    def user(m: re.Match[str]) -> str:
        name = users.get(int(m.group(1)))
        return f"@{name}" if name else m.group(0)

    def role(m: re.Match[str]) -> str:
        name = roles.get(int(m.group(1)))
        return f"@{name}" if name else m.group(0)

    def chan(m: re.Match[str]) -> str:
        name = channels.get(int(m.group(1)))
        return f"#{name}" if name else m.group(0)

    text = _USER.sub(user, message.content)
    text = _ROLE.sub(role, text)
    text = _CHANNEL.sub(chan, text)
    text = _EMOJI.sub(lambda m: f":{m.group(1)}:", text)
    notes = [f"[attachment: {a.filename}]" for a in message.attachments]
    notes += [f"[sticker: {s.name}]" for s in message.stickers]
    return "\n".join(part for part in (text, *notes) if part)


def reply_target(message: discord.Message) -> str | None:
    """The id of the message this one replies to, when it is in the same channel."""
    ref = message.reference
    if ref is None or ref.message_id is None or message.type is not discord.MessageType.reply:
        return None
    if ref.channel_id != message.channel.id:
        return None
    return str(ref.message_id)


def replied_author_id(message: discord.Message) -> int | None:
    """The author of the replied-to message when discord.py resolved it, else None."""
    ref = message.reference
    if ref is None or not isinstance(ref.resolved, discord.Message):
        return None
    return ref.resolved.author.id


def mentions_bot(message: discord.Message, me_id: int, role_id: int | None) -> bool:
    """An explicit @-mention of the bot user or of its managed role (not @everyone)."""
    if me_id in message.raw_mentions or any(u.id == me_id for u in message.mentions):
        return True
    return role_id is not None and role_id in message.raw_role_mentions


def fallback_name(user: discord.abc.User) -> str:
    """A user's name outside a guild: global display name, then username."""
    return user.global_name or user.name
