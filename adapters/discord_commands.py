"""The slash commands a Discord character offers, registered on a discord.py CommandTree."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import discord
from discord import app_commands

# name -> (description, changes state: limited to members with Manage Messages)
COMMANDS: dict[str, tuple[str, bool]] = {
    "reset": ("Forget this channel's conversation for the character", True),
    "regen": ("Replace the character's last reply with a new one", True),
    "why": ("Why the character last spoke or stayed silent", False),
    "stats": ("Token usage and activity of the character", False),
    "mute": ("Keep the character silent in this channel", True),
    "unmute": ("Let the character speak again in this channel", True),
    "help": ("What the character's commands do", False),
}
ADMIN_COMMANDS = frozenset(name for name, (_, admin) in COMMANDS.items() if admin)

Handler = Callable[[discord.Interaction, str], Awaitable[None]]


def build_tree(
    client: discord.Client, handler: Handler
) -> app_commands.CommandTree[discord.Client]:
    """A tree with one command per name, each calling `handler(interaction, name)`.

    State-changing commands default to Manage Messages in Discord's UI; the handler
    re-checks at run time, since server admins can override defaults.
    """
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for name, (description, admin) in COMMANDS.items():
        command: app_commands.Command[Any, [], None] = app_commands.Command(
            name=name, description=description, callback=_callback(handler, name)
        )
        if admin:
            command.default_permissions = discord.Permissions(manage_messages=True)
        tree.add_command(command)
    return tree


def _callback(
    handler: Handler, name: str
) -> Callable[[discord.Interaction], Coroutine[Any, Any, None]]:
    async def callback(interaction: discord.Interaction) -> None:
        await handler(interaction, name)

    return callback
