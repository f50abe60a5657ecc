"""The `salon` command as a user runs it: a real subprocess, stdin piped, exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]


async def salon(
    *args: str, stdin: str = "", cwd: Path | None = None, env: dict[str, str] | None = None
):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd or ROOT,
        env=full_env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    return proc.returncode, out.decode(), err.decode()


async def test_help_lists_the_commands() -> None:
    code, out, _ = await salon("--help")
    assert code == 0
    for cmd in ("console", "run", "check", "import-card"):
        assert cmd in out


async def test_piped_console_session(model, tmp_path) -> None:
    write_config(tmp_path, model)
    model.reply("Hmph, fine.")
    script = "Cheng Yi: @Lu are you free this weekend?\n/wait 2\n/why\n"
    code, out, err = await salon(
        "console",
        "--config",
        str(tmp_path / "config.toml"),
        "--bot",
        "ling_lu",
        "--clock",
        "virtual",
        stdin=script,
        env={"SALON_TEST_KEY": "sk-test-key-123"},
    )
    assert code == 0, err
    assert out == "Ling Lu: Hmph, fine.\n"
    assert "addressed" in err
    assert "sk-test-key-123" not in err + out


async def test_end_of_input_waits_for_the_reply_being_generated(model, tmp_path) -> None:
    write_config(tmp_path, model)
    model.reply("Here I am.")
    code, out, err = await salon(
        "console",
        "--config",
        str(tmp_path / "config.toml"),
        "--bot",
        "ling_lu",
        stdin="Cheng Yi: @Lu hello?\n",
        env={"SALON_TEST_KEY": "k"},
    )
    assert code == 0, err
    assert out == "Ling Lu: Here I am.\n"


async def test_check_ok_and_broken(tmp_path) -> None:
    code, out, err = await salon("check")
    assert code == 0, err
    assert "ling_lu" in out and "jiang_rang" in out
    bad = tmp_path / "config.toml"
    bad.write_text('[llm]\nprefill = "sideways"\n', encoding="utf-8")
    code, out, err = await salon("check", "--config", str(bad))
    assert code == 2
    assert "config.toml" in err and "prefill" in err
    broken_bot = tmp_path / "bad_bot.toml"
    broken_bot.write_text(
        'name = "X"\nprofile = "p"\n[behavior]\ntalkativeness = 3\n', encoding="utf-8"
    )
    code, _, err = await salon("check", "--bot", str(broken_bot))
    assert code == 2 and "bad_bot.toml" in err and "talkativeness" in err


async def test_missing_api_key_is_a_clear_error(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DASHSCOPE_API_KEY"}
    env["DASHSCOPE_API_KEY"] = ""
    code, _, err = await salon("console", "--bot", "ling_lu", stdin="hi\n", cwd=tmp_path, env=env)
    assert code == 2
    assert "DASHSCOPE_API_KEY" in err and "Traceback" not in err


async def test_corrupt_database_is_one_clear_error(model, tmp_path) -> None:
    write_config(tmp_path, model)
    (tmp_path / "salon.db").write_bytes(b"this is not a database" * 100)
    code, _, err = await salon(
        "console",
        "--config",
        str(tmp_path / "config.toml"),
        "--bot",
        "ling_lu",
        stdin="hi\n",
        env={"SALON_TEST_KEY": "k"},
    )
    assert code == 2
    assert "salon.db" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


async def test_unknown_bot_names_the_choices() -> None:
    code, _, err = await salon("console", "--bot", "nobody_here", stdin="")
    assert code == 2
    assert "nobody_here" in err and "ling_lu" in err
