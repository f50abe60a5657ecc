"""Pure translation of Telegram updates into salon's neutral events and actions.

Kept free of I/O so every rule (who is addressed, which channel a topic is, what a command
is for) is tested on plain `telegram.Update` objects built from JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from telegram import Chat, MessageEntity, Update, User
from telegram import Message as TgMessage

from core.types import Channel, Edit, Message, Participant

PLATFORM = "telegram"
COMMANDS = frozenset({"reset", "regen", "why", "stats", "mute", "unmute", "help"})
ADMIN_COMMANDS = frozenset({"reset", "regen", "mute", "unmute"})


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """This adapter's bot account and the character it runs."""

    id: int
    username: str
    key: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message or edit to persist through `engine.receive`."""

    event: Message | Edit


@dataclass(frozen=True, slots=True)
class RunCommand:
    """A salon chat command meant for this bot; `needs_admin` = check chat admin rights first."""

    channel: Channel
    name: str
    args: str
    user: Participant
    message_id: str
    chat_id: int
    user_id: int
    needs_admin: bool


@dataclass(frozen=True, slots=True)
class OpenDirect:
    """`/start` in a private chat: the direct conversation begins."""

    channel: Channel


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do; `reason` is for the debug log."""

    reason: str


Route = Deliver | RunCommand | OpenDirect | Skip


@dataclass(frozen=True, slots=True)
class CommandCall:
    name: str
    target: str | None
    args: str


def channel_of(message: TgMessage) -> Channel:
    """Private chat → direct channel; each forum topic is its own channel, the rest the chat."""
    chat = message.chat
    if chat.type == Chat.PRIVATE:
        return Channel(PLATFORM, str(chat.id), direct=True)
    if message.is_topic_message and message.message_thread_id is not None:
        return Channel(PLATFORM, f"{chat.id}:{message.message_thread_id}")
    return Channel(PLATFORM, str(chat.id))


def chat_target(channel: Channel) -> tuple[int, int | None]:
    """The (chat_id, message_thread_id) a channel posts to."""
    chat, _, thread = channel.id.partition(":")
    return int(chat), int(thread) if thread else None


def display_name(user: User) -> str:
    """The user's full name as Telegram shows it, else `@username`, else the numeric id."""
    full = user.full_name.strip()
    if full:
        return full
    return f"@{user.username}" if user.username else str(user.id)


def body_of(message: TgMessage) -> str | None:
    """The text a character reads: the message text or a media caption (None for neither)."""
    text = message.text if message.text is not None else message.caption
    return text if text and text.strip() else None


def _entities(message: TgMessage, types: list[str | None]) -> dict[MessageEntity, str]:
    if message.text is not None:
        return message.parse_entities(types)
    return message.parse_caption_entities(types)


def parse_command(message: TgMessage) -> CommandCall | None:
    """A leading `/name[@bot] args` (found through Telegram's entities, UTF-16 safe)."""
    text = message.text if message.text is not None else message.caption or ""
    for entity, piece in _entities(message, [MessageEntity.BOT_COMMAND]).items():
        if entity.offset != 0:
            continue
        name, _, target = piece[1:].partition("@")
        args = text[len(piece) :].strip()
        return CommandCall(name.lower(), target or None, args)
    return None


def replied_message(message: TgMessage) -> TgMessage | None:
    """The message this one really replies to (a topic's root message is not a reply)."""
    replied = message.reply_to_message
    if replied is None or replied.forum_topic_created is not None:
        return None
    return replied


def is_addressed(message: TgMessage, me: BotIdentity) -> bool:
    """A mention of the bot, a text_mention of it, a reply to it, or a `/command@bot`."""
    replied = replied_message(message)
    if replied is not None and replied.from_user is not None and replied.from_user.id == me.id:
        return True
    own = me.username.casefold()
    kinds: list[str | None] = [
        MessageEntity.MENTION,
        MessageEntity.TEXT_MENTION,
        MessageEntity.BOT_COMMAND,
    ]
    for entity, piece in _entities(message, kinds).items():
        if entity.type == MessageEntity.TEXT_MENTION:
            if entity.user is not None and entity.user.id == me.id:
                return True
        elif entity.type == MessageEntity.MENTION:
            if piece[1:].casefold() == own:
                return True
        elif piece.partition("@")[2].casefold() == own:
            return True
    return False


def author_of(message: TgMessage, character_for: Callable[[str], str | None]) -> Participant | None:
    """Who wrote it: the user, or the chat it was sent as (anonymous admins, linked channels)."""
    sender_chat = message.sender_chat
    if sender_chat is not None:
        name = sender_chat.title or (f"@{sender_chat.username}" if sender_chat.username else "")
        return Participant(str(sender_chat.id), name or str(sender_chat.id))
    user = message.from_user
    if user is None:
        return None
    uid = str(user.id)
    return Participant(uid, display_name(user), is_bot=user.is_bot, character=character_for(uid))


def _timestamp(message: TgMessage, *, edited: bool) -> float:
    moment = message.edit_date if edited and message.edit_date is not None else message.date
    return moment.timestamp()


def route(
    update: Update,
    me: BotIdentity,
    *,
    character_for: Callable[[str], str | None],
    allowed_chats: Collection[int] = (),
) -> Route:
    """Decide what one update means for this bot's character."""
    edited = update.edited_message is not None
    message = update.edited_message if edited else update.message
    if message is None:
        return Skip("not a message")
    if allowed_chats and message.chat.id not in allowed_chats:
        return Skip(f"chat {message.chat.id} is not in allowed_chats")
    if message.from_user is not None and message.from_user.id == me.id:
        return Skip("own message")
    channel = channel_of(message)
    command = parse_command(message)
    if (
        command is not None
        and command.target
        and command.target.casefold() != me.username.casefold()
    ):
        return Skip(f"command for @{command.target}")
    body = body_of(message)
    if edited:
        if body is None or command is not None:
            return Skip("edit of a command or of a message without text")
        return Deliver(
            Edit(channel, str(message.message_id), body, _timestamp(message, edited=True))
        )
    author = author_of(message, character_for)
    if author is None:
        return Skip("no author")
    if command is not None and command.name == "start":
        return OpenDirect(channel) if channel.direct else Skip("/start outside a private chat")
    if command is not None and command.name in COMMANDS:
        anonymous_admin = (
            message.sender_chat is not None and message.sender_chat.id == message.chat.id
        )
        return RunCommand(
            channel=channel,
            name=command.name,
            args=command.args,
            user=author,
            message_id=str(message.message_id),
            chat_id=message.chat.id,
            user_id=message.from_user.id if message.from_user else 0,
            needs_admin=command.name in ADMIN_COMMANDS
            and not channel.direct
            and not anonymous_admin,
        )
    if body is None:
        return Skip("no text")
    addressed = channel.direct or is_addressed(message, me)
    replied = replied_message(message)
    return Deliver(
        Message(
            channel=channel,
            id=str(message.message_id),
            author=author,
            text=body,
            at=_timestamp(message, edited=False),
            addressed=frozenset({me.key}) if addressed else frozenset(),
            reply_to=str(replied.message_id) if replied is not None else None,
        )
    )
