"""config.toml + SALON_* environment, character files, the resolver and their error messages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import core.cards
from core.config import (
    PARENTHESES_TOKEN_IDS,
    REPO_BOTS_DIR,
    Behavior,
    Character,
    ConfigError,
    DiscordEntry,
    Generation,
    LLMConfig,
    Memory,
    SalonConfig,
    Settings,
    StorageConfig,
    TelegramEntry,
    character_from_data,
    list_characters,
    load_settings,
    resolve_character,
)

REPO = REPO_BOTS_DIR.parent

# The seed document's texts, copied once (a golden-case module may absorb them later).
SEED_JIANG_RANG_PROFILE = (
    "You are Jiang Rang, a male Go prodigy who has won many awards. You are currently in high "
    "school and are the most popular boy on campus. The user is your class monitor. At first, "
    "you saw the user working at a bubble tea shop and were curious. Later, you gradually fell "
    "in love with the user.\n\nYour personality traits:\n\nEnthusiastic, smart, and mischievous"
    "\n\nYour style of action:\n\nWitty and decisive\n\nYour language style:\n\nHumorous and "
    "loves to joke\n\nYou can use parentheses () to indicate actions, expressions, tones, "
    "psychological activities, and story backgrounds to provide additional information for the "
    "conversation."
)
SEED_JIANG_RANG_GREETING = "Class monitor, what are you up to?"
SEED_LING_LU_PROFILE = (
    "In a group chat scenario for musicians, Ling Lu is a 25-year-old musical genius known for "
    "his sharp tongue and regional accent. He is a music partner with Cheng Yi and in a "
    "relationship with Tao Le. The group chat members are all UP masters in the music section "
    "who often collaborate on live streams. Maintain the character's sharp-tongued yet secretly "
    "caring personality, use colloquial expressions, and keep each reply under 40 characters."
)
SEED_LOGIT_BIAS = """
"7": -100, "8": -100, "320": -100, "873": -100, "955": -100,
"1141": -100, "1155": -100, "1255": -100, "1295": -100, "1337": -100,
"1445": -100, "1500": -100, "1883": -100, "1956": -100, "2026": -100,
"2075": -100, "2333": -100, "2601": -100, "2785": -100, "2877": -100,
"3025": -100, "3189": -100, "3203": -100, "3268": -100, "3325": -100,
"3622": -100, "3747": -100, "3759": -100, "4140": -100, "4346": -100,
"4957": -100, "5304": -100, "5349": -100, "5432": -100, "5969": -100,
"6253": -100, "6699": -100, "7021": -100, "7552": -100, "7644": -100,
"7832": -100, "8154": -100, "8204": -100, "8972": -100, "9909": -100,
"10108": -100, "10297": -100, "10583": -100, "10722": -100, "10896": -100,
"12317": -100, "12410": -100, "12832": -100, "13174": -100,
"14031": -100, "16368": -100, "16738": -100, "19238": -100,
"20206": -100, "27855": -100, "42344": -100, "58359": -100, "91093": -100,
"""

MINIMAL_CHARACTER = 'name = "Tester"\nprofile = "You are Tester."\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(call: Any, *args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory so ./config.toml and ./bots are the test's own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- defaults and loading


def test_defaults_without_a_config_file(in_tmp: Path) -> None:
    settings = load_settings(env={})
    assert settings.config_path is None
    assert settings.llm == LLMConfig(
        provider="dashscope",
        base_url="https://dashscope.aliyuncs.com/api/v1",
        api_key_env="DASHSCOPE_API_KEY",
        model="qwen-plus-character",
        prefill="partial",
        timeout_s=60.0,
        max_retries=4,
        max_concurrency=4,
        stream=False,
        input_limit=0,
    )
    assert settings.storage.path == "salon.db"
    assert settings.salon == SalonConfig(bots_dir="bots", bot_loop_limit=3, history_messages=400)
    assert settings.telegram == [] and settings.discord == []
    assert settings.storage_path() == in_tmp / "salon.db"
    assert settings.search_dirs() == [in_tmp / "bots"]


def test_paths_without_a_file_stay_where_they_were_loaded(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(env={})
    (in_tmp / "later").mkdir()
    monkeypatch.chdir(in_tmp / "later")
    assert settings.storage_path() == in_tmp / "salon.db"
    assert settings.search_dirs() == [in_tmp / "bots"]


def test_no_path_picks_up_config_toml_in_the_working_directory(in_tmp: Path) -> None:
    write(in_tmp / "config.toml", '[llm]\nmodel = "qwen-flash-character"\n')
    settings = load_settings(env={})
    assert settings.config_path == (in_tmp / "config.toml").resolve()
    assert settings.llm.model == "qwen-flash-character"


def test_full_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
[llm]
provider = "openai"
base_url = "http://127.0.0.1:8000/v1/"
api_key_env = "MY_KEY"
model = "qwen-flash-character"
prefill = "continue_final_message"
timeout_s = 5
max_retries = 0
max_concurrency = 1
stream = true
input_limit = 7000
[storage]
path = "data/x.db"
[salon]
bots_dir = "chars"
bot_loop_limit = 5
history_messages = 50
[[telegram]]
bot = "ling_lu"
token_env = "TG_A"
base_url = "http://127.0.0.1:8081"
allowed_chats = [-100123, 42]
[[telegram]]
bot = "su_wan"
token_env = "TG_B"
[[discord]]
bot = "jiang_rang"
token_env = "DC_A"
allowed_guilds = [1]
allowed_channels = [2, 3]
max_length = 1500
""",
    )
    settings = load_settings(path, env={})
    assert settings.llm.provider == "openai"
    assert settings.llm.base_url == "http://127.0.0.1:8000/v1"
    assert settings.llm.timeout_s == 5.0 and isinstance(settings.llm.timeout_s, float)
    assert (settings.llm.max_retries, settings.llm.max_concurrency) == (0, 1)
    assert settings.llm.stream is True and settings.llm.input_limit == 7000
    assert settings.llm.prefill == "continue_final_message"
    assert settings.salon == SalonConfig(bots_dir="chars", bot_loop_limit=5, history_messages=50)
    assert settings.telegram == [
        TelegramEntry(
            bot="ling_lu",
            token_env="TG_A",
            base_url="http://127.0.0.1:8081",
            allowed_chats=[-100123, 42],
        ),
        TelegramEntry(bot="su_wan", token_env="TG_B"),
    ]
    assert settings.discord == [
        DiscordEntry(
            bot="jiang_rang",
            token_env="DC_A",
            allowed_guilds=[1],
            allowed_channels=[2, 3],
            max_length=1500,
        )
    ]
    assert settings.search_dirs() == [tmp_path.resolve() / "chars"]


def test_config_example_lists_every_key_with_the_defaults() -> None:
    path = REPO / "config.example.toml"
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    sections: dict[str, type[BaseModel]] = {
        "llm": LLMConfig,
        "storage": StorageConfig,
        "salon": SalonConfig,
    }
    for name, model in sections.items():
        assert set(data[name]) == set(model.model_fields), name
    assert set(data["telegram"][0]) == set(TelegramEntry.model_fields)
    assert set(data["discord"][0]) == set(DiscordEntry.model_fields)
    for line in text.splitlines():
        if re.match(r"^\w+ = ", line):
            assert "#" in line, f"key without a comment: {line}"

    settings = load_settings(path, env={})
    assert settings.llm == LLMConfig()
    assert settings.storage == StorageConfig()
    assert settings.salon == SalonConfig()
    telegram, discord = settings.telegram[0], settings.discord[0]
    assert telegram == TelegramEntry(bot=telegram.bot, token_env=telegram.token_env)
    assert discord == DiscordEntry(bot=discord.bot, token_env=discord.token_env)
    for entry in (telegram, discord):
        assert resolve_character(entry.bot, settings.search_dirs()).key == entry.bot


def test_settings_are_immutable(in_tmp: Path) -> None:
    settings = load_settings(env={})
    with pytest.raises(ValidationError):
        settings.llm.model = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- environment


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[llm]\nmodel = "qwen-plus-character"\ntimeout_s = 10\nstream = false\n',
    )
    settings = load_settings(
        path,
        env={
            "SALON_LLM__MODEL": "qwen-flash-character",
            "SALON_LLM__STREAM": "true",
            "SALON_STORAGE__PATH": "/var/lib/salon/s.db",
            "SALON_SALON__BOT_LOOP_LIMIT": "7",
        },
    )
    assert settings.llm.model == "qwen-flash-character"
    assert settings.llm.timeout_s == 10.0
    assert settings.llm.stream is True
    assert settings.storage_path() == Path("/var/lib/salon/s.db")
    assert settings.salon.bot_loop_limit == 7


def test_environment_applies_without_a_file_and_defaults_to_os_environ(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SALON_LLM__PROVIDER", "openai")
    monkeypatch.setenv("SALON_LLM__MAX_RETRIES", "9")
    settings = load_settings()
    assert settings.llm.provider == "openai" and settings.llm.max_retries == 9
    assert load_settings(env={}).llm.provider == "dashscope"


def test_whole_list_from_json_replaces_the_file_list(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[[telegram]]\nbot = "a"\ntoken_env = "A"\n')
    settings = load_settings(
        path,
        env={
            "SALON_TELEGRAM": '[{"bot": "ling_lu", "token_env": "TG", "allowed_chats": [5]}]',
            "SALON_DISCORD": '[{"bot": "jiang_rang", "token_env": "DC"}]',
        },
    )
    assert settings.telegram == [TelegramEntry(bot="ling_lu", token_env="TG", allowed_chats=[5])]
    assert settings.discord == [DiscordEntry(bot="jiang_rang", token_env="DC")]


def test_indexed_variables_patch_and_append_list_entries(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[[discord]]\nbot = "a"\ntoken_env = "A"\nmax_length = 900\n')
    settings = load_settings(
        path,
        env={
            "SALON_DISCORD__0__ALLOWED_CHANNELS": "[11, 12]",
            "SALON_DISCORD__0__BOT": "123",
            "SALON_DISCORD__1__BOT": "jiang_rang",
            "SALON_DISCORD__1__TOKEN_ENV": "B",
            "SALON_DISCORD__1__MAX_LENGTH": "100",
        },
    )
    assert settings.discord == [
        DiscordEntry(bot="123", token_env="A", allowed_channels=[11, 12], max_length=900),
        DiscordEntry(bot="jiang_rang", token_env="B", max_length=100),
    ]


def test_indexed_variable_with_a_gap_is_an_error(tmp_path: Path) -> None:
    err = config_error(load_settings, env={"SALON_TELEGRAM__2__BOT": "x"})
    assert str(err) == (
        "environment: [[telegram]] #3: SALON_TELEGRAM__2__... leaves a gap (the list has 0 "
        "entries); fix: number the entries from 0 without gaps"
    )


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[llm]\ntimeout_s = 3\n")
    err = config_error(load_settings, path, env={"SALON_LLM__TIMEOUT_S": "soon"})
    assert err.problems == [
        '[llm] timeout_s: must be a number (got "soon") (from environment variable '
        "SALON_LLM__TIMEOUT_S); fix: write a number without quotes"
    ]
    err = config_error(load_settings, env={"SALON_LLM__MODLE": "x"})
    assert err.file == "environment"
    assert err.problems[0].startswith(
        "[llm] modle: unknown key (from environment variable SALON_LLM__MODLE)"
    )
    assert "did you mean 'model'?" in err.problems[0]
    err = config_error(load_settings, env={"SALON_TELEGRAM": "ling_lu"})
    assert err.problems[0].startswith(
        "[[telegram]]: environment variable SALON_TELEGRAM is not valid JSON; fix:"
    )


def test_api_key_comes_from_the_named_variable(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(env={"DASHSCOPE_API_KEY": "sk-1"}).api_key() == "sk-1"
    assert load_settings(env={"DASHSCOPE_API_KEY": ""}).api_key() is None
    assert load_settings(env={}).api_key() is None
    monkeypatch.setenv("OTHER_KEY", "sk-2")
    monkeypatch.setenv("SALON_LLM__API_KEY_ENV", "OTHER_KEY")
    settings = load_settings()
    assert settings.api_key() == "sk-2"
    assert "sk-2" not in repr(settings)


def test_a_secret_pasted_as_the_variable_name_is_never_echoed(tmp_path: Path) -> None:
    secret = "sk-3f9a0c1d2e"
    path = write(tmp_path / "c.toml", f'[llm]\napi_key_env = "{secret}"\n')
    err = config_error(load_settings, path, env={})
    assert secret not in str(err)
    assert err.problems == [
        "[llm] api_key_env: must be the NAME of an environment variable (letters, digits, _); "
        "fix: write the variable's name here, and put the secret itself in that variable"
    ]
    token = "123456:AAE-telegram-token"
    err = config_error(
        load_settings, env={"SALON_TELEGRAM__0__BOT": "x", "SALON_TELEGRAM__0__TOKEN_ENV": token}
    )
    assert token not in str(err) and "[[telegram]] #1 token_env" in str(err)
    assert err.__cause__ is None and err.__suppress_context__


# ---------------------------------------------------------------- config errors


def test_explicit_missing_config_path_is_an_error(in_tmp: Path) -> None:
    err = config_error(load_settings, "nope/config.toml", env={})
    assert err.file == "nope/config.toml"
    assert str(err).startswith("nope/config.toml: config file not found; fix: check the path")
    err = config_error(load_settings, in_tmp, env={})
    assert err.problems == ["is not a file; fix: give the path of a .toml file"]


def test_config_errors_name_file_key_and_fix_one_line_each(in_tmp: Path) -> None:
    write(
        in_tmp / "conf" / "config.toml",
        """
[llm]
prefill = "parital"
max_retries = 1.5
stream = "yes"
max_concurrency = 0
[salon]
history_mesages = 10
[[telegram]]
bot = "ling_lu"
[[discord]]
bot = "jiang_rang"
token_env = "D"
allowed_channels = ["general"]
[telegarm]
bot = "x"
""",
    )
    err = config_error(load_settings, "conf/config.toml", env={})
    assert err.file == "conf/config.toml"
    assert err.problems == [
        '[llm] prefill: must be one of "partial", "prefix", "continue_final_message", "auto", '
        '"none" (got "parital"); fix: use one of them (did you mean "partial"?)',
        "[llm] max_retries: must be a whole number (got 1.5); fix: write a whole number without "
        "quotes",
        "[llm] max_concurrency: must be at least 1 (got 0); fix: set a whole number that is at "
        "least 1",
        '[llm] stream: must be true or false (got "yes"); fix: write true or false without quotes',
        "[salon] history_mesages: unknown key; fix: remove it or correct the spelling (did you "
        "mean 'history_messages'?)",
        "[[telegram]] #1 token_env: required but missing; fix: add token_env = ... here",
        '[[discord]] #1 allowed_channels[0]: must be a whole number (got "general"); fix: write a '
        "whole number without quotes",
        "telegarm: unknown key; fix: remove it or correct the spelling (did you mean 'telegram'?)",
    ]
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems)
    assert all(line.startswith("conf/config.toml: ") for line in lines)


def test_invalid_toml_names_line_and_column(in_tmp: Path) -> None:
    write(in_tmp / "config.toml", '[llm]\nmodel = "a"\nprefill = partial\n')
    err = config_error(load_settings, "config.toml", env={})
    assert len(err.problems) == 1
    assert str(err).startswith(
        "config.toml: invalid TOML at line 3, column 11: Invalid value; fix:"
    )


def test_not_utf8_is_an_error(in_tmp: Path) -> None:
    (in_tmp / "config.toml").write_bytes(b'[llm]\nmodel = "\xff"\n')
    err = config_error(load_settings, "config.toml", env={})
    assert err.problems == ["not UTF-8 text (byte 15); fix: save the file as UTF-8"]


def test_duplicate_token_variable_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[[telegram]]\nbot = "a"\ntoken_env = "T"\n[[telegram]]\nbot = "b"\ntoken_env = "T"\n',
    )
    err = config_error(load_settings, path, env={})
    assert err.problems == [
        "[[telegram]] #2 token_env: T is already used by entry #1, so one bot account would "
        "connect twice; fix: give each entry its own bot token variable"
    ]


def test_bad_urls_are_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[llm]\nbase_url = "dashscope.aliyuncs.com"\n'
        '[[telegram]]\nbot = "a"\ntoken_env = "T"\nbase_url = "localhost:8081"\n',
    )
    err = config_error(load_settings, path, env={})
    assert [problem.split(":")[0] for problem in err.problems] == [
        "[llm] base_url",
        "[[telegram]] #1 base_url",
    ]
    assert all("must be an http:// or https:// URL; fix:" in p for p in err.problems)


# ---------------------------------------------------------------- relative paths


def test_relative_storage_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "deploy" / "config.toml", '[storage]\npath = "data/salon.db"\n[salon]\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path, env={})
    assert settings.storage_path() == (tmp_path / "deploy" / "data" / "salon.db").resolve()
    assert settings.search_dirs() == [(tmp_path / "deploy" / "bots").resolve()]
    absolute = load_settings(path, env={"SALON_STORAGE__PATH": str(tmp_path / "abs.db")})
    assert absolute.storage_path() == tmp_path / "abs.db"
    memory = load_settings(path, env={"SALON_STORAGE__PATH": ":memory:"})
    assert memory.storage_path() == Path(":memory:")
    no_dir = load_settings(path, env={"SALON_SALON__BOTS_DIR": ""})
    assert no_dir.search_dirs() == []


# ---------------------------------------------------------------- characters


def test_shipped_characters_use_the_seed_texts_byte_for_byte() -> None:
    jiang = resolve_character("jiang_rang")
    assert jiang.key == "jiang_rang" and jiang.name == "Jiang Rang"
    assert jiang.profile == SEED_JIANG_RANG_PROFILE
    assert jiang.profile.encode() == SEED_JIANG_RANG_PROFILE.encode()
    assert jiang.greeting == SEED_JIANG_RANG_GREETING
    assert Path(jiang.source) == REPO_BOTS_DIR / "jiang_rang.toml"

    ling = resolve_character("ling_lu")
    assert ling.name == "Ling Lu" and ling.aliases == ["凌露", "Lu"]
    assert ling.profile.encode() == SEED_LING_LU_PROFILE.encode()
    assert ling.greeting is None
    assert ling.behavior.talkativeness == 0.3


def test_shipped_chinese_character() -> None:
    su = resolve_character("su_wan")
    assert su.name == "苏晚"
    assert re.search(r"[\u4e00-\u9fff]", su.name)
    for section in ("【角色详情】", "【补充角色描述】", "【对话上下文】", "【风格指南】"):
        assert section in su.profile
    assert su.greeting and su.memory.enable_long_term_memory is False
    assert su.profile == su.profile.strip()


def test_every_shipped_character_file_is_valid() -> None:
    names = sorted(path.stem for path in REPO_BOTS_DIR.glob("*.toml"))
    assert {"jiang_rang", "ling_lu", "su_wan"} <= set(names)
    for name in names:
        assert resolve_character(name).key == name


def test_character_defaults_and_normalisation(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.toml",
        'name = "  Tester "\naliases = [" T "]\nprofile = "  Keep\\n me  \\n"\ngreeting = "  "\n',
    )
    character = resolve_character(str(path))
    assert character.key == "t" and character.source == str(path)
    assert character.name == "Tester" and character.aliases == ["T"]
    assert character.profile == "  Keep\n me  \n"
    assert character.greeting is None and character.alternate_greetings == []
    assert character.generation == Generation()
    assert character.generation.n == 1 and character.generation.temperature is None
    assert character.behavior == Behavior(
        talkativeness=0.2,
        debounce_s=1.5,
        continue_after_s=90,
        max_continuations=2,
        continue_backoff=2.0,
        cooldown_s=30,
        replies_per_minute=6,
        user_replies_per_minute=3,
        daily_token_budget=0,
    )
    assert character.memory == Memory(
        enable_long_term_memory=False, memory_entries=200, skip_save_types=[]
    )
    assert character.card == {}
    assert character.logit_bias() is None


def test_every_character_option_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "full.toml",
        """
name = "Full"
aliases = ["F"]
profile = "p"
greeting = "hi"
alternate_greetings = ["hello", "hey"]
[generation]
temperature = 0.7
top_p = 0.9
seed = 123321
max_tokens = 200
n = 4
logit_bias = { "320" = -50 }
ban = ["parentheses"]
[behavior]
talkativeness = 1
debounce_s = 0
continue_after_s = 0.5
max_continuations = 0
continue_backoff = 1
cooldown_s = 0
replies_per_minute = 0
user_replies_per_minute = 0
daily_token_budget = 100000
[memory]
enable_long_term_memory = true
memory_entries = 20
skip_save_types = ["system", "output"]
[card]
creator = "someone"
character_book = { entries = [{ keys = ["x"], content = "y" }] }
""",
    )
    c = resolve_character(str(path))
    assert c.alternate_greetings == ["hello", "hey"]
    assert (c.generation.temperature, c.generation.top_p, c.generation.seed) == (0.7, 0.9, 123321)
    assert (c.generation.max_tokens, c.generation.n) == (200, 4)
    assert c.behavior.talkativeness == 1.0 and c.behavior.continue_after_s == 0.5
    assert c.behavior.daily_token_budget == 100000
    assert c.memory.enable_long_term_memory and c.memory.memory_entries == 20
    assert c.memory.skip_save_types == ["system", "output"]
    assert c.card["creator"] == "someone"
    assert c.card["character_book"]["entries"][0]["content"] == "y"


def test_logit_bias_merges_explicit_entries_over_the_ban_preset() -> None:
    ids = re.findall(r'"(\d+)": -100', SEED_LOGIT_BIAS)
    assert tuple(ids) == PARENTHESES_TOKEN_IDS
    assert len(PARENTHESES_TOKEN_IDS) == 63 == len(set(PARENTHESES_TOKEN_IDS))

    def make(generation: dict[str, Any]) -> Character:
        data = {"name": "X", "profile": "p", "generation": generation}
        return character_from_data(data, key="x", source="x.toml")

    assert make({"ban": ["parentheses"]}).logit_bias() == dict.fromkeys(ids, -100)
    assert make({"logit_bias": {"5": 3}}).logit_bias() == {"5": 3}
    merged = make({"ban": ["parentheses"], "logit_bias": {"320": 0, "99999": -7}}).logit_bias()
    assert merged is not None
    assert len(merged) == 64 and merged["320"] == 0 and merged["99999"] == -7
    assert merged["7"] == -100
    assert make({}).logit_bias() is None


# ---------------------------------------------------------------- character errors


def test_character_error_example_from_the_contract(in_tmp: Path) -> None:
    write(in_tmp / "bots" / "ling_lu.toml", MINIMAL_CHARACTER + "[behavior]\ntalkativeness = 1.5\n")
    err = config_error(resolve_character, "ling_lu")
    assert str(err) == (
        "bots/ling_lu.toml: behavior.talkativeness: must be between 0 and 1 (got 1.5); "
        "fix: set a number from 0.0 to 1.0"
    )
    assert err.file == "bots/ling_lu.toml"


def test_character_errors_each_name_the_dotted_key(in_tmp: Path) -> None:
    write(
        in_tmp / "bad.toml",
        """
key = "other"
aliases = ["", 3]
greeting = 5
[generation]
temperature = 2.5
top_p = 0
n = 5
max_tokens = 0
logit_bias = { "320" = -101, "(" = -100 }
ban = ["brackets"]
[behavior]
talkativeness = "0.3"
continue_backoff = 0.5
max_continuations = -1
talkative = 1
[memory]
memory_entries = 500
skip_save_types = ["everything"]
""",
    )
    err = config_error(resolve_character, "./bad.toml")
    assert err.file == "bad.toml"
    assert err.problems == [
        "key: unknown key; fix: remove it (the loader sets it from the file name and path)",
        "name: required but missing; fix: add name = ... here",
        "aliases[0]: must not be empty; fix: write a non-empty value",
        'aliases[1]: must be text (got 3); fix: put it in "double quotes"',
        "profile: required but missing; fix: add profile = ... here",
        'greeting: must be text (got 5); fix: put it in "double quotes"',
        "generation.temperature: must be between 0 and 2 (got 2.5); fix: set a number from 0.0 "
        "to 2.0",
        "generation.top_p: must be greater than 0 and at most 1 (got 0); fix: set a number that "
        "is greater than 0 and at most 1",
        "generation.max_tokens: must be at least 1 (got 0); fix: set a whole number that is at "
        "least 1",
        "generation.n: must be between 1 and 4 (got 5); fix: set a whole number from 1 to 4",
        "generation.logit_bias.320: must be between -100 and 100 (got -101); fix: set a whole "
        "number from -100 to 100",
        'generation.ban[0]: must be one of "parentheses" (got "brackets"); fix: use one of them',
        'behavior.talkativeness: must be a number (got "0.3"); fix: write a number without quotes',
        "behavior.max_continuations: must be at least 0 (got -1); fix: set a whole number that "
        "is at least 0",
        "behavior.continue_backoff: must be at least 1 (got 0.5); fix: set a number that is at "
        "least 1",
        "behavior.talkative: unknown key; fix: remove it or correct the spelling (did you mean "
        "'talkativeness'?)",
        "memory.memory_entries: must be between 20 and 400 (got 500); fix: set a whole number "
        "from 20 to 400",
        'memory.skip_save_types[0]: must be one of "system", "user", "assistant", "output" '
        '(got "everything"); fix: use one of them',
    ]


def test_token_id_keys_and_empty_profile(in_tmp: Path) -> None:
    write(
        in_tmp / "c.toml",
        'name = "C"\nprofile = "  \\n "\n[generation]\nlogit_bias = { "(" = -100 }\n',
    )
    err = config_error(resolve_character, "c.toml")
    assert err.problems == [
        'profile: must not be empty; fix: write the system message in profile = """..."""',
        'generation.logit_bias: keys must be token ids made of digits (got "("); fix: use ids '
        'from the model\'s token mapping table, e.g. "320" = -100',
    ]


def test_invalid_character_toml_names_line_and_column(in_tmp: Path) -> None:
    write(in_tmp / "bots" / "broken.toml", 'name = "B"\nprofile = """unterminated\n')
    err = config_error(resolve_character, "broken")
    assert err.file == "bots/broken.toml"
    assert str(err).startswith(
        "bots/broken.toml: invalid TOML at line 3, column 1 (the end of the file): "
        "Unterminated string; fix: correct the syntax there"
    )


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=-5, max_value=5, allow_nan=False))
def test_talkativeness_range_property(value: float) -> None:
    data = {"name": "X", "profile": "p", "behavior": {"talkativeness": value}}
    if 0 <= value <= 1:
        assert character_from_data(data, key="x", source="x.toml").behavior.talkativeness == value
    else:
        with pytest.raises(ConfigError) as info:
            character_from_data(data, key="x", source="x.toml")
        assert info.value.problems[0].startswith("behavior.talkativeness: must be between 0 and 1")


# ---------------------------------------------------------------- resolver


def test_resolver_search_order(in_tmp: Path) -> None:
    first, second = in_tmp / "first", in_tmp / "second"
    write(second / "ling_lu.toml", 'name = "Second"\nprofile = "p"\n')
    write(second / "only_second.toml", 'name = "Only"\nprofile = "p"\n')
    assert resolve_character("ling_lu", [first, second]).name == "Second"

    write(first / "ling_lu.toml", 'name = "First"\nprofile = "p"\n')
    assert resolve_character("ling_lu", [first, second]).name == "First"
    assert resolve_character("only_second", [first, second]).name == "Only"

    write(in_tmp / "bots" / "ling_lu.toml", 'name = "Cwd"\nprofile = "p"\n')
    assert resolve_character("ling_lu", [first]).name == "First"
    assert resolve_character("ling_lu").name == "Cwd"
    assert resolve_character("ling_lu").source == str(in_tmp / "bots" / "ling_lu.toml")
    assert resolve_character("jiang_rang").source == str(REPO_BOTS_DIR / "jiang_rang.toml")

    assert list_characters([first, second]) == sorted(
        {"ling_lu", "only_second", "jiang_rang", "su_wan"}
        | {path.stem for path in REPO_BOTS_DIR.glob("*.toml")}
    )


def test_settings_search_dirs_feed_the_resolver(in_tmp: Path) -> None:
    write(in_tmp / "deploy" / "config.toml", '[salon]\nbots_dir = "mine"\n')
    write(in_tmp / "deploy" / "mine" / "guest.toml", 'name = "Guest"\nprofile = "p"\n')
    settings = load_settings("deploy/config.toml", env={})
    assert resolve_character("guest", settings.search_dirs()).name == "Guest"
    assert "guest" in list_characters(settings.search_dirs())


def test_unknown_character_name_lists_the_available_ones(in_tmp: Path) -> None:
    write(in_tmp / "extra" / "guest.toml", MINIMAL_CHARACTER)
    err = config_error(resolve_character, "ling_luu", [in_tmp / "extra"])
    assert err.file == "ling_luu.toml"
    message = str(err)
    assert message.startswith("ling_luu.toml: no character named 'ling_luu' (searched extra, ")
    assert "fix: use one of the available names (" in message
    for name in ("guest", "jiang_rang", "ling_lu", "su_wan"):
        assert name in message.split("available names (")[1]
    assert len(message.splitlines()) == 1


def test_paths_to_character_files(in_tmp: Path) -> None:
    path = write(in_tmp / "some where" / "guest.toml", MINIMAL_CHARACTER)
    assert resolve_character(str(path)).key == "guest"
    assert resolve_character("some where/guest.toml").name == "Tester"
    err = config_error(resolve_character, "missing/guest.toml")
    assert err.file == "missing/guest.toml"
    assert err.problems[0].startswith("character file not found; fix: check the path, or use one")
    write(in_tmp / "notes.txt", "x")
    err = config_error(resolve_character, "./notes.txt")
    assert err.problems == [
        "unsupported file type; fix: use a .toml character file or a .png/.json card"
    ]
    err = config_error(resolve_character, "  ")
    assert err.problems[0].startswith("empty character name; fix: use one of the available names")


def test_cards_are_delegated_and_validated_like_files(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def fake_load_card(path: Any) -> dict[str, Any]:
        calls.append(Path(path))
        if Path(path).name == "broken.png":
            raise core.cards.CardError(str(path), "no 'chara' or 'ccv3' tEXt chunk")
        if Path(path).name == "odd.json":
            return {"name": "Odd", "profile": "p", "behavior": {"talkativeness": 3}}
        return {"name": "Card Girl", "profile": "From a card.", "card": {"tags": ["x"]}}

    monkeypatch.setattr(core.cards, "load_card", fake_load_card)
    for name in ("girl.png", "broken.png", "odd.json"):
        (in_tmp / name).write_bytes(b"not inspected by the resolver")

    girl = resolve_character("girl.png")
    assert (girl.key, girl.name, girl.source) == ("girl", "Card Girl", "girl.png")
    assert girl.card == {"tags": ["x"]}
    assert calls == [Path("girl.png")]

    err = config_error(resolve_character, "broken.png")
    assert str(err) == "broken.png: no 'chara' or 'ccv3' tEXt chunk"

    err = config_error(resolve_character, "odd.json")
    assert err.problems == [
        "behavior.talkativeness: must be between 0 and 1 (got 3); fix: set a number from 0.0 to 1.0"
    ]


def test_real_json_card_through_the_resolver(in_tmp: Path) -> None:
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Mira",
            "description": "{{char}} runs a lighthouse.",
            "personality": "calm",
            "scenario": "",
            "first_mes": "The light is on.",
            "mes_example": "",
            "creator": "someone",
        },
    }
    import json

    write(in_tmp / "mira.json", json.dumps(card))
    mira = resolve_character("mira.json")
    assert mira.key == "mira" and mira.name == "Mira"
    assert "Mira runs a lighthouse." in mira.profile
    assert mira.greeting == "The light is on."


def test_character_from_settings_model_is_a_contract_shape() -> None:
    assert set(Settings.model_fields) == {"llm", "storage", "salon", "telegram", "discord"}
    assert {
        "key",
        "source",
        "name",
        "aliases",
        "profile",
        "greeting",
        "alternate_greetings",
        "generation",
        "behavior",
        "memory",
        "card",
    } == set(Character.model_fields)
