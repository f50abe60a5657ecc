"""The Discord adapter's pure helpers and its start-up failure without a server."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from adapters.discord_adapter import DiscordAdapter
from adapters.discord_commands import ADMIN_COMMANDS, COMMANDS
from adapters.discord_sender import MAX_RETRY_S, retry_after_of
from adapters.discord_translate import channel_for, is_allowed
from core.config import DiscordEntry, resolve_character
from core.errors import StartupError
from core.types import Channel


@pytest.mark.parametrize(
    ("guilds", "channels", "where", "expected"),
    [
        ([], [], {"guild_id": 1, "channel_id": 2}, True),
        ([1], [], {"guild_id": 1, "channel_id": 2}, True),
        ([9], [], {"guild_id": 1, "channel_id": 2}, False),
        ([], [2], {"guild_id": 1, "channel_id": 2}, True),
        ([], [3], {"guild_id": 1, "channel_id": 2}, False),
        ([], [3], {"guild_id": 1, "channel_id": 2, "parent_id": 3}, True),  # a thread of 3
        ([1], [3], {"guild_id": 9, "channel_id": 3}, False),
        ([9], [9], {"guild_id": None, "channel_id": 2}, True),  # DMs are never filtered
    ],
)
def test_allowlists(
    guilds: list[int], channels: list[int], where: dict[str, Any], expected: bool
) -> None:
    assert is_allowed(guilds, channels, **where) is expected


def test_direct_chats_are_channels_without_a_guild() -> None:
    assert channel_for(5, None) == Channel("discord", "5", direct=True)
    assert channel_for(5, 7) == Channel("discord", "5", direct=False)


def _rate_limited(headers: dict[str, str]) -> discord.HTTPException:
    response: Any = SimpleNamespace(status=429, reason="Too Many Requests", headers=headers)
    return discord.HTTPException(response, {"message": "slow down", "code": 0})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({}, 1.0),
        ({"Retry-After": "soon"}, 1.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "99999"}, MAX_RETRY_S),
    ],
)
def test_retry_after_from_a_429_discord_py_did_not_retry(
    headers: dict[str, str], expected: float
) -> None:
    assert retry_after_of(_rate_limited(headers)) == expected


def test_state_changing_commands_are_the_admin_ones() -> None:
    assert frozenset({"reset", "regen", "mute", "unmute"}) == ADMIN_COMMANDS
    assert {"why", "stats", "help"} <= set(COMMANDS) - ADMIN_COMMANDS


async def test_unreachable_discord_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    engine: Any = SimpleNamespace()
    adapter = DiscordAdapter(
        DiscordEntry(bot="jiang_rang", token_env="DISCORD_TOKEN_X"),
        resolve_character("jiang_rang"),
        engine,
        token="abc.SECRET.def",
    )
    with pytest.raises(StartupError) as info:
        await asyncio.wait_for(adapter.run(asyncio.Event()), 10)
    assert "cannot reach Discord" in str(info.value)
    assert "SECRET" not in str(info.value)
