"""`salon run`: one engine, every configured Telegram and Discord bot, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import signal
import sys
from typing import TYPE_CHECKING, Protocol

from core.errors import StartupError

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger("salon.run")


class Adapter(Protocol):
    """A running bot account: serves until `stop` is set; raises StartupError on fatal setup."""

    async def run(self, stop: asyncio.Event) -> None: ...


def _token(env_name: str, where: str) -> str:
    token = os.environ.get(env_name, "").strip()
    if not token:
        raise StartupError(
            f"{where}: the environment variable {env_name} is not set; export the bot token there"
        )
    return token


async def run_adapters(
    settings: Settings, *, stop: asyncio.Event | None = None, freeze_startup: bool = False
) -> int:
    """Start every adapter of the config with one shared engine; the exit code.

    `freeze_startup` (the `salon run` process) exempts what start-up loaded from the garbage
    collector's full passes and makes those passes rarer (`core.collector`); a host that embeds
    salon decides that for itself.
    """
    from adapters.console import configure_logging
    from core.collector import tune_collector
    from core.config import resolve_character
    from core.engine import build_engine

    if not logging.getLogger("salon").handlers:
        configure_logging(sys.stderr, verbose=False)
    if not settings.telegram and not settings.discord:
        raise StartupError(
            "the config declares no bots: add a [[telegram]] or [[discord]] section "
            "(see config.example.toml), or try `salon console --bot NAME`"
        )
    dirs = settings.search_dirs()
    tg = [(e, resolve_character(e.bot, dirs)) for e in settings.telegram]
    dc = [(e, resolve_character(e.bot, dirs)) for e in settings.discord]
    characters = {c.key: c for _, c in (*tg, *dc)}
    tokens_tg = [_token(e.token_env, f"[[telegram]] bot = {e.bot!r}") for e, _ in tg]
    tokens_dc = [_token(e.token_env, f"[[discord]] bot = {e.bot!r}") for e, _ in dc]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if sys.platform != "win32":  # the Windows event loop has no signal handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            # outside the main thread (embedding, tests) signals stay with the host
            with contextlib.suppress(RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    async with build_engine(settings, characters, rng=random.Random()) as engine:
        adapters: list[Adapter] = []
        if tg:
            from adapters.telegram import TelegramAdapter

            adapters += [
                TelegramAdapter(e, c, engine, token=t)
                for (e, c), t in zip(tg, tokens_tg, strict=True)
            ]
        if dc:
            from adapters.discord_adapter import DiscordAdapter

            adapters += [
                DiscordAdapter(e, c, engine, token=t)
                for (e, c), t in zip(dc, tokens_dc, strict=True)
            ]
        engine.on_fatal = lambda _e: stop.set()
        if freeze_startup:
            # what is loaded by now lives as long as the process: keep the collector's full
            # passes off it (both platforms loaded: ~80,000 objects, ~70 ms a pass, measured)
            gc.collect()
            gc.freeze()
            tune_collector()
        tasks = [asyncio.create_task(a.run(stop)) for a in adapters]
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and t.exception() is not None:
                    stop.set()
                    raise t.exception()  # type: ignore[misc]
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for res in results:
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    raise res
        finally:
            stopper.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        if engine.fatal is not None:
            return 2  # the engine has logged the reason once
    return 0
