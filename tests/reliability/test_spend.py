"""Spend protection: reply rate limits per channel and per user, and a daily token budget.

Console sessions on a virtual clock against the fake model server; the model is never asked
while a limit holds, and the reason shows in /why, /stats and (for the budget) the log.
"""

from __future__ import annotations

from pathlib import Path

from core.config import Character, Settings
from tests.adapters.test_console_golden import run, variant
from tests.fakes.model_server import FakeModelServer

BUDGET_LINE = "spent its daily token budget"


def lu(tmp_path: Path, **behavior: int) -> Character:
    knobs = {
        "talkativeness": 0,
        "cooldown_s": 0,
        "replies_per_minute": 0,
        "user_replies_per_minute": 0,
        **behavior,
    }
    extra = "aliases = ['Lu']\n[behavior]\n" + "".join(f"{k} = {v}\n" for k, v in knobs.items())
    return variant(tmp_path, "lu", name="Ling Lu", profile="You are Ling Lu.", extra=extra)


def numbered(model: FakeModelServer) -> None:
    model.replier = lambda body: f"reply {len(model.requests)}"


async def test_channel_rate_limit(model: FakeModelServer, settings_for, tmp_path: Path) -> None:
    settings: Settings = settings_for(model)
    numbered(model)
    script = [
        "Ann: @Lu one", "/wait 5",
        "Bo: @Lu two", "/wait 5",
        "Cy: @Lu three", "/wait 5", "/why",
        "/wait 60",
        "Dee: @Lu four", "/wait 5",
    ]  # fmt: skip
    code, out, err = await run(settings, [lu(tmp_path, replies_per_minute=2)], script)
    assert code == 0, err
    assert out.splitlines() == ["Ling Lu: reply 1", "Ling Lu: reply 2", "Ling Lu: reply 3"]
    assert len(model.requests) == 3
    assert "Ling Lu: silent: channel rate limit (2 replies a minute)" in err


async def test_per_user_rate_limit(model: FakeModelServer, settings_for, tmp_path: Path) -> None:
    settings: Settings = settings_for(model)
    numbered(model)
    script = [
        "Ann: @Lu one", "/wait 5",
        "Ann: @Lu two", "/wait 5", "/why",
        "Bo: @Lu and me?", "/wait 5",
        "/wait 60",
        "Ann: @Lu three", "/wait 5",
    ]  # fmt: skip
    code, out, err = await run(settings, [lu(tmp_path, user_replies_per_minute=1)], script)
    assert code == 0, err
    assert out.splitlines() == ["Ling Lu: reply 1", "Ling Lu: reply 2", "Ling Lu: reply 3"]
    assert len(model.requests) == 3
    asked = [m["content"] for m in model.requests[-1].body["messages"]]
    assert "Ann: @Lu two" in asked  # skipped, not forgotten: it stays in the history
    assert "Ling Lu: silent: per-user rate limit (1 replies a minute)" in err


async def test_daily_token_budget_goes_quiet_says_why_and_resets_at_midnight(
    model: FakeModelServer, settings_for, tmp_path: Path
) -> None:
    settings: Settings = settings_for(model)
    numbered(model)
    model.usage = {"prompt_tokens": 700, "completion_tokens": 400}
    character = lu(tmp_path, daily_token_budget=2000)
    script = [
        "Ann: @Lu one", "/wait 5",
        "Bo: @Lu two", "/wait 5",
        "Cy: @Lu three", "/wait 5",
        "Dee: @Lu four", "/wait 5",
        "/why", "/stats",
        "/wait 7200",  # the virtual clock starts at 22:13 UTC: this crosses midnight
        "Ann: @Lu new day?", "/wait 5", "/stats",
    ]  # fmt: skip
    code, out, err = await run(settings, [character], script)
    assert code == 0, err
    assert out.splitlines() == ["Ling Lu: reply 1", "Ling Lu: reply 2", "Ling Lu: reply 3"]
    assert len(model.requests) == 3
    warnings = [line for line in err.splitlines() if line.startswith("salon: warning:")]
    assert len(warnings) == 1 and BUDGET_LINE in warnings[0] and "2200 of 2000" in warnings[0]
    assert "Ling Lu: silent: daily token budget spent (2200 of 2000 tokens)" in err
    assert "daily budget: 2200 of 2000 tokens (spent — staying quiet)" in err
    assert "daily budget: 1100 of 2000 tokens (left)" in err


async def test_the_budget_is_per_character_across_channels(
    model: FakeModelServer, settings_for, tmp_path: Path
) -> None:
    settings: Settings = settings_for(model)
    numbered(model)
    model.usage = {"prompt_tokens": 900, "completion_tokens": 200}
    character = lu(tmp_path, daily_token_budget=1000)
    code, out, err = await run(settings, [character], ["Ann: @Lu hi", "/wait 5"], channel_id="a")
    assert (code, out) == (0, "Ling Lu: reply 1\n"), err
    script = ["Bo: @Lu over here", "/wait 5", "Bo: @Lu hello?", "/wait 5", "/stats"]
    code, out, err = await run(settings, [character], script, channel_id="b")
    assert (code, out) == (0, ""), err
    assert len(model.requests) == 1
    assert err.count(BUDGET_LINE) == 1
    assert err.count("console:b lu: silent: daily token budget spent (1100 of 1000 tokens)") == 2
    assert "here: 0 requests" in err and "today: 1 requests" in err
