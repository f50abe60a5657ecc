"""`salon run` with a [[discord]] entry: the runner's real code path against the fake Discord."""

from __future__ import annotations

import asyncio

import pytest

from adapters import cli
from adapters.runner import run_adapters
from core.config import Settings
from tests.adapters.test_discord import BEHAVIOR, World, until, world
from tests.conftest import write_config

__all__ = ["world"]  # the fixture, shared with the end-to-end tests

QUICK = BEHAVIOR.replace("debounce_s = 1.0", "debounce_s = 0")


def run_config(w: World) -> Settings:
    bots = w.tmp_path / "bots"
    bots.mkdir(exist_ok=True)
    (bots / "jiang_rang.toml").write_text(
        f'name = "Jiang Rang"\nprofile = "You are Jiang Rang."\n{QUICK}', encoding="utf-8"
    )
    extra = (
        '[salon]\nbots_dir = "bots"\n'
        '[[discord]]\nbot = "jiang_rang"\ntoken_env = "DISCORD_TOKEN_JIANG_RANG"\n'
    )
    return write_config(w.tmp_path, w.model, extra=extra)


async def test_salon_run_answers_a_mention_and_stops_cleanly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    jiang = world.bots["jiang_rang"]
    monkeypatch.setenv("DISCORD_TOKEN_JIANG_RANG", jiang.token or "")
    world.model.reply("At your service.")
    stop = asyncio.Event()
    task = asyncio.create_task(run_adapters(run_config(world), stop=stop))
    await until(lambda: world.fake.connected(jiang) or task.done())
    ask = await world.fake.post(world.general, world.ali, f"<@{jiang.id}> you up?")
    await until(lambda: bool(world.fake.sent(world.general)) or task.done())
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    (post,) = world.fake.sent(world.general)
    assert post.body["content"] == "At your service."
    assert str(post.body["message_reference"]["message_id"]) == ask["id"]


async def test_salon_run_with_an_invalid_token_exits_2_with_one_line(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN_JIANG_RANG", "not-a-valid-SECRET")
    path = run_config(world).config_path
    code = await asyncio.to_thread(cli.main, ["run", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "DISCORD_TOKEN_JIANG_RANG" in err
    assert "SECRET" not in err
    assert len([line for line in err.splitlines() if line.startswith("salon:")]) == 1
