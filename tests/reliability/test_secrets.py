"""Secrets: failing runs with DEBUG logging on never show the API key or a bot token.

Every scenario greps everything it can see afterwards: all log records of every logger
(formatted with their tracebacks), the console's stdout/stderr, exception texts, /why and
/stats, and the bytes of the history database.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import adapters.console
from adapters.runner import run_adapters
from core.clock import VirtualClock
from core.config import Settings, load_settings
from core.errors import StartupError
from tests.adapters.test_console_golden import feed, variant
from tests.adapters.test_discord import World, online, world  # noqa: F401  (fixture)
from tests.adapters.test_telegram_e2e import Salon, people, salon, tg  # noqa: F401  (fixtures)
from tests.conftest import write_config
from tests.fakes.instrumented_model import InstrumentedModelServer
from tests.fakes.recording import LogTap, tapped
from tests.fakes.telegram_api import FakeTelegramServer

API_KEY = "sk-RELIABILITY-0123456789abcdef"
LIBRARIES = ("telegram", "discord", "aiohttp", "asyncio", "core", "adapters")


@pytest.fixture
def debug_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogTap]:
    """Everything at DEBUG, also after the console installs its own handler on "salon"."""
    with tapped(logging.DEBUG, extra=LIBRARIES) as tap:
        original = adapters.console.configure_logging

        def configure(err: Any, verbose: bool = True) -> None:
            original(err, verbose)
            salon_log = logging.getLogger("salon")
            salon_log.addHandler(tap)
            salon_log.setLevel(logging.DEBUG)

        monkeypatch.setattr(adapters.console, "configure_logging", configure)
        yield tap


def everything(tmp_path: Path, *texts: str) -> str:
    """All text a user or an attacker could read after the run, in one string."""
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".toml"]
    data = [p.read_bytes().decode("utf-8", "replace") for p in files]
    return "\n".join([*texts, *data])


async def console(settings: Settings, tmp_path: Path, lines: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    character = variant(tmp_path, "lu", name="Ling Lu", profile="P", extra="aliases = ['Lu']\n")
    code = await adapters.console.run_console(
        settings, [character], lines=feed(lines), clock=VirtualClock(), out=out, err=err, seed=1
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def leaky() -> Any:
    server = InstrumentedModelServer()
    async with server:
        yield server


def settings_with_key(tmp_path: Path, server: InstrumentedModelServer, **env: str) -> Settings:
    write_config(tmp_path, server)
    return load_settings(tmp_path / "config.toml", env={"SALON_TEST_KEY": API_KEY, **env})


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_model_errors_that_quote_the_key(
    leaky: InstrumentedModelServer, tmp_path: Path, debug_logs: LogTap, stream: bool
) -> None:
    """400, 500 (until give-up) and an error event, each quoting the Authorization header."""
    settings = settings_with_key(tmp_path, leaky, SALON_LLM__STREAM=str(stream).lower())
    leaky.leak_key(400)
    leaky.leak_key(500, times=3)
    leaky.leak_key(200, stream_error=True)
    script = ["Ann: @Lu one", "/wait 30", "Ann: @Lu two", "/wait 30", "Ann: @Lu three"]
    script += ["/wait 30", "/why", "/stats"]
    code, out, err = await console(settings, tmp_path, script)
    assert code == 0, err
    assert leaky.quoted == [f"Bearer {API_KEY}"] * 5, "the key was sent and quoted back"
    assert len([line for line in err.splitlines() if "salon: warning:" in line]) >= 3
    assert API_KEY not in everything(tmp_path, out, err, debug_logs.text)


async def test_model_rejects_the_key(
    leaky: InstrumentedModelServer, tmp_path: Path, debug_logs: LogTap
) -> None:
    settings = settings_with_key(tmp_path, leaky)
    leaky.leak_key(401)
    code, out, err = await console(settings, tmp_path, ["Ann: @Lu hi", "/wait 5", "/why"])
    assert code == 2
    assert "API key was rejected" in err
    assert leaky.quoted == [f"Bearer {API_KEY}"]
    assert API_KEY not in everything(tmp_path, out, err, debug_logs.text)


async def test_telegram_tokens_with_debug_logging(
    salon: Salon,  # noqa: F811
    tg: FakeTelegramServer,  # noqa: F811
    model: Any,
    tmp_path: Path,
    debug_logs: LogTap,
) -> None:
    """A session that works, then a token Telegram rejects."""
    salon.character("ling_lu", "Ling Lu")
    bot = salon.bot("ling_lu", "ling_lu_bot")
    alice, _ = people(tg)
    group = tg.add_group("Band", bots=[bot])
    model.replier = lambda body: "Hmph."
    await salon.start()
    tg.post(group, alice, "@ling_lu_bot hello")
    await tg.wait_for(lambda: len(tg.sent(group)) == 1, "the reply")
    await salon.settle()
    assert await salon.stop() == 0
    good_token = bot.token

    wrong = "7000:RELIABILITY-wrong-token-secret"
    salon.monkeypatch.setenv("TG_E2E_LING_LU", wrong)
    with pytest.raises(StartupError) as rejected:
        await run_adapters(salon.settings())
    seen = everything(tmp_path, str(rejected.value), debug_logs.text, *salon.log.lines)
    assert "rejected" in str(rejected.value)
    for secret in (good_token, wrong, wrong.split(":", 1)[1], "sk-test-not-a-real-key"):
        assert secret not in seen, "a token or key in the logs"
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


async def test_discord_tokens_with_debug_logging(
    world: World,  # noqa: F811
    debug_logs: LogTap,
) -> None:
    """A session that works, then a token Discord rejects."""
    jiang = world.bots["jiang_rang"]
    world.model.reply("Here.")
    async with online(world, "jiang_rang") as run:
        await world.fake.post(world.general, world.ali, f"<@{jiang.id}> there?")
        await run.settle()
    assert len(world.fake.sent(world.general, jiang)) == 1
    wrong = "wrong-RELIABILITY-discord-token"
    with pytest.raises(StartupError) as rejected:
        async with online(world, "jiang_rang", tokens={"jiang_rang": wrong}):
            pass
    seen = everything(world.tmp_path, str(rejected.value), debug_logs.text)
    assert debug_logs.lines("discord"), "discord.py's own DEBUG logs were captured"
    for secret in (jiang.token or "", wrong):
        assert secret and secret not in seen, "a token in the logs"
