"""The small frozen types that cross the core/adapter boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Participant:
    """Someone who writes in a channel: a human, a foreign bot, or a salon character.

    `id` is the platform's stable user id; `name` is the display name exactly as the
    platform shows it (untrusted text). `character` is the character key when the author
    is one of this process's salon characters.
    """

    id: str
    name: str
    is_bot: bool = False
    character: str | None = None


@dataclass(frozen=True, slots=True)
class Channel:
    """One conversation space: a console room, a Telegram chat/topic, a Discord channel/thread."""

    platform: str
    id: str
    direct: bool = False
    key: str = field(init=False, repr=False, compare=False)
    """`platform:id`, made once: the engine looks channels up by it several times a message."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.platform}:{self.id}")


@dataclass(frozen=True, slots=True)
class Message:
    """A message as the platform delivered it. `text` is kept untouched in the store.

    `addressed` holds the keys of the characters this message explicitly addresses
    (an @-mention, a reply to the character's message, a command to it).
    """

    channel: Channel
    id: str
    author: Participant
    text: str
    at: float
    addressed: frozenset[str] = frozenset()
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    channel: Channel
    id: str
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class Delete:
    channel: Channel
    id: str


Incoming = Message | Edit | Delete


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A piece of text a character posts; `reply_to` is the platform id it answers, if any."""

    channel: Channel
    text: str
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """What the platform gave back for a posted piece: its message id."""

    id: str
    at: float


class Sender(Protocol):
    """The only thing the core needs from an adapter: post text and show typing.

    `max_length` is the platform's per-message limit; the core splits longer replies.
    """

    max_length: int

    async def send(self, out: Outgoing) -> Sent: ...

    async def typing(self, channel: Channel) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The text an adapter shows for a chat command like /why or /stats."""

    text: str
    ok: bool = True
    extra: dict[str, str] = field(default_factory=dict)
