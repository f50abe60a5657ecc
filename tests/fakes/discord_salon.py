"""`salon` with discord.py pointed at a fake Discord, for tests that run it as its own process.

Discord has no configurable API or gateway address, so the child sets discord.py's two
constants (as `FakeDiscord.patched` does in-process) from FAKE_DISCORD_API and
FAKE_DISCORD_GATEWAY, then runs the CLI: `python -m tests.fakes.discord_salon run --config F`.
"""

from __future__ import annotations

import os
import sys

import discord.gateway
import discord.http
import yarl

from adapters.cli import main

if __name__ == "__main__":
    discord.http.Route.BASE = os.environ["FAKE_DISCORD_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
    sys.exit(main(sys.argv[1:]))
