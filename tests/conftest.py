"""Shared fixtures: the fake model server and settings/characters pointing at it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from core.config import Character, Settings, load_settings, resolve_character
from tests.fakes.model_server import FakeModelServer


@pytest.fixture
async def model() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as server:
        yield server


def write_config(
    tmp_path: Path,
    server: FakeModelServer,
    *,
    provider: str = "openai",
    prefill: str = "partial",
    extra: str = "",
    env: dict[str, str] | None = None,
) -> Settings:
    """A config.toml in tmp_path that points [llm] at the fake server and keeps the db there."""
    base = server.url + ("/v1" if provider == "openai" else "/api/v1")
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[llm]
provider = "{provider}"
base_url = "{base}"
api_key_env = "SALON_TEST_KEY"
model = "qwen-plus-character"
prefill = "{prefill}"
timeout_s = 5
max_retries = 2
[storage]
path = "salon.db"
{extra}
""",
        encoding="utf-8",
    )
    return load_settings(path, env={"SALON_TEST_KEY": "sk-test-not-a-real-key", **(env or {})})


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(server: FakeModelServer, **kw: Any) -> Settings:
        return write_config(tmp_path, server, **kw)

    return make


def character_file(tmp_path: Path, key: str, body: str) -> Character:
    path = tmp_path / f"{key}.toml"
    path.write_text(body, encoding="utf-8")
    return resolve_character(str(path))


@pytest.fixture
def ling_lu() -> Character:
    return resolve_character("ling_lu")


@pytest.fixture
def jiang_rang() -> Character:
    return resolve_character("jiang_rang")


# CI runs hypothesis derandomized, so a landing never depends on the examples of the day;
# local runs keep exploring new examples.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")
