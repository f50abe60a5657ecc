"""Configuration: config.toml + SALON_* environment, character files, and the character resolver.

Every problem becomes one ConfigError whose lines name the file, the key and the fix, because
these files are edited by hand and the error is often the first thing a new user reads.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "SALON_"
ENV_DELIMITER = "__"
REPO_BOTS_DIR = Path(__file__).resolve().parents[1] / "bots"
CARD_SUFFIXES = (".png", ".json")

# The seed document's logit_bias example: "(", ")", full-width variants and every "(+letter" token.
PARENTHESES_TOKEN_IDS: tuple[str, ...] = (
    "7", "8", "320", "873", "955",
    "1141", "1155", "1255", "1295", "1337",
    "1445", "1500", "1883", "1956", "2026",
    "2075", "2333", "2601", "2785", "2877",
    "3025", "3189", "3203", "3268", "3325",
    "3622", "3747", "3759", "4140", "4346",
    "4957", "5304", "5349", "5432", "5969",
    "6253", "6699", "7021", "7552", "7644",
    "7832", "8154", "8204", "8972", "9909",
    "10108", "10297", "10583", "10722", "10896",
    "12317", "12410", "12832", "13174",
    "14031", "16368", "16738", "19238",
    "20206", "27855", "42344", "58359", "91093",
)  # fmt: skip

BAN_PRESETS: Mapping[str, tuple[str, ...]] = {"parentheses": PARENTHESES_TOKEN_IDS}


class ConfigError(Exception):
    """A configuration or character file is unusable; one line per problem, each naming the fix."""

    def __init__(self, file: str, problems: Sequence[str]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.file}: {problem}" for problem in self.problems)


# ---------------------------------------------------------------- config.toml

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_FROZEN = ConfigDict(extra="forbid", strict=True, frozen=True)

EnvVarName = Annotated[str, StringConstraints(pattern=_ENV_NAME)]


def _check_url(value: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    if not value.startswith(("http://", "https://")):
        raise ValueError(
            "must be an http:// or https:// URL; fix: write the server root, "
            'e.g. "http://127.0.0.1:8081"'
        )
    return value.rstrip("/")


class LLMConfig(BaseModel):
    """Which model server to talk to and how hard to try."""

    model_config = _FROZEN

    provider: Literal["dashscope", "openai"] = "dashscope"
    base_url: str = "https://dashscope.aliyuncs.com/api/v1"
    api_key_env: EnvVarName = "DASHSCOPE_API_KEY"
    model: Annotated[str, StringConstraints(min_length=1)] = "qwen-plus-character"
    prefill: Literal["partial", "prefix", "continue_final_message", "auto", "none"] = "partial"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    max_concurrency: int = Field(default=4, ge=1)
    stream: bool = False
    input_limit: int = Field(default=0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)


class StorageConfig(BaseModel):
    model_config = _FROZEN

    path: Annotated[str, StringConstraints(min_length=1)] = "salon.db"
    cache_mb: int = Field(default=64, ge=0)


class SalonConfig(BaseModel):
    model_config = _FROZEN

    bots_dir: str = "bots"
    bot_loop_limit: int = Field(default=3, ge=1)
    history_messages: int = Field(default=400, ge=1)


class TelegramEntry(BaseModel):
    """One Telegram bot account running one character."""

    model_config = _FROZEN

    bot: Annotated[str, StringConstraints(min_length=1)]
    token_env: EnvVarName
    base_url: str = ""
    allowed_chats: list[int] = Field(default_factory=list)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value, allow_empty=True)


class DiscordEntry(BaseModel):
    """One Discord bot account running one character."""

    model_config = _FROZEN

    bot: Annotated[str, StringConstraints(min_length=1)]
    token_env: EnvVarName
    allowed_guilds: list[int] = Field(default_factory=list)
    allowed_channels: list[int] = Field(default_factory=list)
    max_length: int = Field(default=2000, ge=1)


@dataclass(frozen=True, slots=True)
class _LoadContext:
    data: Mapping[str, Any]
    env: Mapping[str, str]


_LOADING: ContextVar[_LoadContext | None] = ContextVar("salon_config_loading", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The parsed config.toml, handed over unchanged so unknown sections still reach validation."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class _EnvProblem(Exception):
    """A SALON_* variable that cannot be turned into settings at all (before validation)."""


class _MappingEnvSource(EnvSettingsSource):
    """SALON_* variables from an injected mapping, with SALON_TELEGRAM__0__BOT-style list items.

    pydantic-settings reads a whole list only as JSON (SALON_TELEGRAM='[...]'); an indexed
    variable instead patches that entry of the file's list, or appends one right after it.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], env: Mapping[str, str], file: Mapping[str, Any]
    ) -> None:
        self._mapping = env
        self._file = file
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._mapping.items()}

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        entry_models: dict[str, type[BaseModel]] = {
            "telegram": TelegramEntry,
            "discord": DiscordEntry,
        }
        for name, model in entry_models.items():
            patches = data.get(name)
            if isinstance(patches, dict) and all(str(key).isdigit() for key in patches):
                data[name] = _patch_list(name, model, self._file.get(name), patches)
        return data


def _patch_list(
    name: str, model: type[BaseModel], base: Any, patches: Mapping[str, Any]
) -> list[Any]:
    entries = [dict(item) if isinstance(item, dict) else item for item in base or []]
    variable = f"{ENV_PREFIX}{name.upper()}{ENV_DELIMITER}"
    for index in sorted(int(key) for key in patches):
        patch = patches[str(index)]
        if not isinstance(patch, dict):
            raise _EnvProblem(
                f"[[{name}]] #{index + 1}: {variable}{index} must name a key; fix: use "
                f"{variable}{index}{ENV_DELIMITER}BOT=... (one variable per key)"
            )
        values = {key: _env_leaf(model, key, value) for key, value in patch.items()}
        if index < len(entries) and isinstance(entries[index], dict):
            entries[index].update(values)
        elif index == len(entries):
            entries.append(values)
        else:
            raise _EnvProblem(
                f"[[{name}]] #{index + 1}: {variable}{index}{ENV_DELIMITER}... leaves a gap (the "
                f"list has {len(entries)} entries); fix: number the entries from 0 without gaps"
            )
    return entries


def _env_leaf(model: type[BaseModel], key: str, value: Any) -> Any:
    """Decode an indexed list variable as pydantic-settings would: JSON, unless the key is text."""
    field = model.model_fields.get(key)
    if not isinstance(value, str) or field is None or _unwrap(field.annotation)[0] is str:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


class Settings(BaseSettings):
    """Everything config.toml holds; environment variables SALON_SECTION__KEY win over the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        strict=True,
        frozen=True,
    )

    llm: LLMConfig = Field(default_factory=LLMConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    salon: SalonConfig = Field(default_factory=SalonConfig)
    telegram: list[TelegramEntry] = Field(default_factory=list)
    discord: list[DiscordEntry] = Field(default_factory=list)

    _config_path: Path | None = PrivateAttr(default=None)
    _root: Path | None = PrivateAttr(default=None)
    _env: Mapping[str, str] | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        ctx = _LOADING.get()
        if ctx is None:
            return (init_settings, env_settings)
        return (
            init_settings,
            _MappingEnvSource(settings_cls, ctx.env, ctx.data),
            _FileSource(settings_cls, ctx.data),
        )

    @property
    def config_path(self) -> Path | None:
        """The config file these settings came from (absolute), or None for defaults + env."""
        return self._config_path

    def _base_dir(self) -> Path:
        return self._root if self._root is not None else Path.cwd()

    def api_key(self) -> str | None:
        """The model API key from the variable named by llm.api_key_env ("" counts as unset)."""
        env = os.environ if self._env is None else self._env
        return env.get(self.llm.api_key_env) or None

    def storage_path(self) -> Path:
        """The database file; relative paths start at the config file's directory (else the cwd
        at load time), so a later chdir does not move the database."""
        if self.storage.path == ":memory:":
            return Path(":memory:")
        path = Path(self.storage.path).expanduser()
        return path if path.is_absolute() else self._base_dir() / path

    def search_dirs(self) -> list[Path]:
        """Extra character directories from [salon] bots_dir, resolved like storage.path."""
        if not self.salon.bots_dir:
            return []
        path = Path(self.salon.bots_dir).expanduser()
        return [path if path.is_absolute() else self._base_dir() / path]


def load_settings(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Read config.toml (the given path, else ./config.toml if present) and SALON_* variables.

    `env` replaces os.environ for both the SALON_* overrides and api_key(); raises ConfigError.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    file: Path | None
    if path is None:
        default = Path.cwd() / "config.toml"
        file = default if default.is_file() else None
    else:
        file = Path(path).expanduser()
        if not file.exists():
            raise ConfigError(
                _display(file),
                [
                    "config file not found; fix: check the path, or copy config.example.toml "
                    "there, or leave the path out to run on defaults and SALON_* variables"
                ],
            )
        if not file.is_file():
            raise ConfigError(_display(file), ["is not a file; fix: give the path of a .toml file"])
    where = _display(file) if file is not None else "environment"
    data = _read_toml(file) if file is not None else {}
    token = _LOADING.set(_LoadContext(data=data, env=environ))
    try:
        settings = Settings()
    except ValidationError as err:
        # `from None`: pydantic's own message echoes raw input, which might be a misplaced secret.
        raise ConfigError(where, _problems(err, Settings, _config_key, environ)) from None
    except SettingsError as err:
        raise ConfigError(where, [_env_decode_problem(err, environ)]) from None
    except _EnvProblem as err:
        raise ConfigError(where, [str(err)]) from None
    finally:
        _LOADING.reset(token)
    settings._config_path = file.resolve() if file is not None else None
    settings._root = settings._config_path.parent if settings._config_path else Path.cwd()
    settings._env = env
    duplicates = _duplicate_tokens(settings)
    if duplicates:
        raise ConfigError(where, duplicates)
    return settings


def _duplicate_tokens(settings: Settings) -> list[str]:
    problems: list[str] = []
    platforms: dict[str, Sequence[TelegramEntry | DiscordEntry]] = {
        "telegram": settings.telegram,
        "discord": settings.discord,
    }
    for platform, entries in platforms.items():
        first: dict[str, int] = {}
        for index, entry in enumerate(entries, start=1):
            if entry.token_env in first:
                problems.append(
                    f"[[{platform}]] #{index} token_env: {entry.token_env} is already used by "
                    f"entry #{first[entry.token_env]}, so one bot account would connect twice; "
                    "fix: give each entry its own bot token variable"
                )
            first.setdefault(entry.token_env, index)
    return problems


def _env_decode_problem(err: SettingsError, env: Mapping[str, str]) -> str:
    match = re.search(r'field "(\w+)"', str(err))
    field = match.group(1) if match else "?"
    name = f"{ENV_PREFIX}{field.upper()}"
    present = [key for key in env if key.upper().startswith(name)]
    shown = present[0] if present else name
    return (
        f"{_config_key((field,))}: environment variable {shown} is not valid JSON; fix: set it "
        'to JSON, e.g. [{"bot": "ling_lu", "token_env": "TELEGRAM_TOKEN_LING_LU"}] for a list'
    )


# ---------------------------------------------------------------- characters


class Generation(BaseModel):
    """Sampling options sent with every request for this character (None = the server default)."""

    model_config = _FROZEN

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=4)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    ban: list[Literal["parentheses"]] = Field(default_factory=list)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        bad = [key for key in (value or {}) if not key.isdigit()]
        if bad:
            raise ValueError(
                f"keys must be token ids made of digits (got {_show(bad[0])}); fix: use ids from "
                'the model\'s token mapping table, e.g. "320" = -100'
            )
        return value


class Behavior(BaseModel):
    """When and how often the character speaks (read by the policy and the orchestrator)."""

    model_config = _FROZEN

    talkativeness: float = Field(default=0.2, ge=0, le=1)
    debounce_s: float = Field(default=1.5, ge=0)
    continue_after_s: float = Field(default=90.0, gt=0)
    max_continuations: int = Field(default=2, ge=0)
    continue_backoff: float = Field(default=2.0, ge=1.0)
    cooldown_s: float = Field(default=30.0, ge=0)
    replies_per_minute: int = Field(default=6, ge=0)
    user_replies_per_minute: int = Field(default=3, ge=0)
    daily_token_budget: int = Field(default=0, ge=0)


class Memory(BaseModel):
    """DashScope long-term memory (character_options.memory)."""

    model_config = _FROZEN

    enable_long_term_memory: bool = False
    memory_entries: int = Field(default=200, ge=20, le=400)
    skip_save_types: list[Literal["system", "user", "assistant", "output"]] = Field(
        default_factory=list
    )


NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Character(BaseModel):
    """A role-play character: bots/NAME.toml, or a character card converted to the same fields."""

    model_config = _FROZEN
    LOADER_KEYS: ClassVar[frozenset[str]] = frozenset({"key", "source"})

    key: NonEmptyText
    source: str
    name: NonEmptyText
    aliases: list[NonEmptyText] = Field(default_factory=list)
    profile: str
    greeting: str | None = None
    alternate_greetings: list[str] = Field(default_factory=list)
    generation: Generation = Field(default_factory=Generation)
    behavior: Behavior = Field(default_factory=Behavior)
    memory: Memory = Field(default_factory=Memory)
    card: dict[str, Any] = Field(default_factory=dict)

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                'must not be empty; fix: write the system message in profile = """..."""'
            )
        return value

    @field_validator("greeting")
    @classmethod
    def _greeting(cls, value: str | None) -> str | None:
        return value if value is not None and value.strip() else None

    def logit_bias(self) -> dict[str, int] | None:
        """The request's logit_bias: the ban presets at -100, then explicit entries (which win)."""
        merged: dict[str, int] = {}
        for preset in self.generation.ban:
            merged.update(dict.fromkeys(BAN_PRESETS[preset], -100))
        merged.update(self.generation.logit_bias or {})
        return merged or None


def character_from_data(data: Mapping[str, Any], *, key: str, source: str) -> Character:
    """Validate character fields (from TOML or a converted card); errors name `source`."""
    where = _display(Path(source))
    problems = [
        f"{name}: unknown key; fix: remove it (the loader sets it from the file name and path)"
        for name in sorted(Character.LOADER_KEYS & set(data))
    ]
    fields = {name: value for name, value in data.items() if name not in Character.LOADER_KEYS}
    try:
        character = Character.model_validate({**fields, "key": key, "source": source})
    except ValidationError as err:
        raise ConfigError(where, problems + _problems(err, Character, _dotted, {})) from None
    if problems:
        raise ConfigError(where, problems)
    return character


def load_character_file(path: str | os.PathLike[str]) -> Character:
    """Load one bots/NAME.toml; the character's key is the file stem."""
    file = Path(path).expanduser()
    return character_from_data(_read_toml(file), key=file.stem, source=str(file))


def _card_character(file: Path) -> Character:
    from core import cards  # lazy: cards are optional and written separately

    try:
        data = cards.load_card(file)
    except ValueError as err:
        message = str(err)
        for prefix in (str(file), _display(file), file.name):
            if message.startswith(prefix + ": "):
                message = message[len(prefix) + 2 :]
                break
        raise ConfigError(_display(file), [message]) from None
    return character_from_data(data, key=file.stem, source=str(file))


def _search_order(search_dirs: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    order: list[Path] = []
    for folder in (*search_dirs, Path.cwd() / "bots", REPO_BOTS_DIR):
        resolved = Path(folder).expanduser().resolve()
        if resolved not in seen:
            seen.add(resolved)
            order.append(Path(folder).expanduser())
    return order


def list_characters(search_dirs: Sequence[Path] = ()) -> list[str]:
    """Names `resolve_character` accepts: the stems of *.toml in every searched directory."""
    names: set[str] = set()
    for folder in _search_order(search_dirs):
        if folder.is_dir():
            names.update(file.stem for file in folder.glob("*.toml") if file.is_file())
    return sorted(names)


def _looks_like_path(ref: str) -> bool:
    return (
        ref.lower().endswith((".toml", *CARD_SUFFIXES))
        or "/" in ref
        or "\\" in ref
        or ref.startswith(("~", "."))
    )


def resolve_character(ref: str, search_dirs: Sequence[Path] = ()) -> Character:
    """Turn a --bot / `bot = ...` value into a Character: a name, a .toml path, or a card path."""
    if not ref.strip():
        raise ConfigError(
            "bot", ["empty character name; fix: " + _available_hint(list_characters(search_dirs))]
        )
    if _looks_like_path(ref):
        file = Path(ref).expanduser()
        if not file.is_file():
            hint = _available_hint(list_characters(search_dirs))
            raise ConfigError(
                _display(file), [f"character file not found; fix: check the path, or {hint}"]
            )
        suffix = file.suffix.lower()
        if suffix == ".toml":
            return load_character_file(file)
        if suffix in CARD_SUFFIXES:
            return _card_character(file)
        raise ConfigError(
            _display(file),
            ["unsupported file type; fix: use a .toml character file or a .png/.json card"],
        )
    order = _search_order(search_dirs)
    for folder in order:
        candidate = folder / f"{ref}.toml"
        if candidate.is_file():
            return load_character_file(candidate)
    searched = ", ".join(_display(folder) for folder in order)
    raise ConfigError(
        f"{ref}.toml",
        [
            f"no character named {ref!r} (searched {searched}); fix: "
            + _available_hint(list_characters(search_dirs))
        ],
    )


def _available_hint(names: Sequence[str]) -> str:
    listed = ", ".join(names) if names else "none found"
    return (
        f"use one of the available names ({listed}) or a path to a .toml character file "
        "or a .png/.json character card"
    )


# ---------------------------------------------------------------- files and messages


def _display(path: Path) -> str:
    """A path as the user would write it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


_TOML_POSITION = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|(?P<end>end of document))\)$"
)


def _read_toml(file: Path) -> dict[str, Any]:
    where = _display(file)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(where, ["file not found; fix: check the path"]) from None
    except OSError as err:
        raise ConfigError(
            where, [f"cannot read the file ({err.strerror}); fix: check it"]
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            where, [f"not UTF-8 text (byte {err.start}); fix: save the file as UTF-8"]
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raw = str(err)
        match = _TOML_POSITION.match(raw)
        message = match["msg"] if match else raw
        if match and match["end"]:
            lines = text.split("\n")
            position = f"line {len(lines)}, column {len(lines[-1]) + 1} (the end of the file)"
        elif match:
            position = f"line {match['line']}, column {match['col']}"
        else:
            position = "an unknown position"
        raise ConfigError(
            where,
            [
                f"invalid TOML at {position}: {message}; fix: correct the syntax there "
                '(text needs "quotes", sections look like [name], one key = value per line)'
            ],
        ) from None


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text or "(top level)"


_SECTIONS = ("llm", "storage", "salon")
_LISTS = ("telegram", "discord")


def _config_key(loc: Sequence[str | int]) -> str:
    if not loc:
        return "(top level)"
    head, rest = loc[0], list(loc[1:])
    if head in _LISTS:
        prefix = f"[[{head}]]"
        if rest and isinstance(rest[0], int):
            prefix += f" #{rest[0] + 1}"
            rest = rest[1:]
    elif head in _SECTIONS:
        prefix = f"[{head}]"
    else:
        return _dotted(loc)
    return f"{prefix} {_dotted(rest)}" if rest else prefix


def _env_note(loc: Sequence[str | int], env: Mapping[str, str]) -> str:
    names = {key.upper(): key for key in env if key.upper().startswith(ENV_PREFIX)}
    parts = [str(part).upper() for part in loc]
    for end in range(len(parts), 0, -1):
        name = ENV_PREFIX + ENV_DELIMITER.join(parts[:end])
        if name in names:
            return f" (from environment variable {names[name]})"
    return ""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, int | float):
        text = format(value, "g") if isinstance(value, float) else str(value)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip Annotated and Optional, collecting constraint metadata on the way."""
    meta: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            for item in extra:
                meta.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin is Union or type(annotation).__name__ == "UnionType":
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation, meta
            annotation = members[0]
        else:
            return annotation, meta


def _annotation_at(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, list[Any]]:
    """The type and constraints of the value at `loc` (None if the path leaves the schema)."""
    annotation: Any = model
    meta: list[Any] = []
    for part in loc:
        annotation, _ = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None, []
            annotation, meta = field.annotation, list(field.metadata)
        elif get_origin(annotation) is list:
            annotation, meta = get_args(annotation)[0], []
        elif get_origin(annotation) is dict:
            annotation, meta = get_args(annotation)[1], []
        else:
            return None, []
    annotation, extra = _unwrap(annotation)
    return annotation, meta + extra


def _number(value: float, as_float: bool) -> str:
    return str(float(value)) if as_float else format(value, "g")


def _range_text(annotation: Any, meta: Sequence[Any]) -> tuple[str, str]:
    bounds: dict[str, float] = {}
    for item in meta:
        for name in ("ge", "gt", "le", "lt"):
            bound = getattr(item, name, None)
            if bound is not None:
                bounds[name] = bound
    is_float = annotation is float
    kind = "a number" if is_float else "a whole number"
    low_name = "ge" if "ge" in bounds else "gt" if "gt" in bounds else None
    high_name = "le" if "le" in bounds else "lt" if "lt" in bounds else None
    low = bounds.get(low_name, 0) if low_name else 0
    high = bounds.get(high_name, 0) if high_name else 0
    if low_name == "ge" and high_name == "le":
        return (
            f"must be between {low:g} and {high:g}",
            f"set {kind} from {_number(low, is_float)} to {_number(high, is_float)}",
        )
    parts: list[str] = []
    if low_name:
        parts.append(f"at least {low:g}" if low_name == "ge" else f"greater than {low:g}")
    if high_name:
        parts.append(f"at most {high:g}" if high_name == "le" else f"less than {high:g}")
    return "must be " + " and ".join(parts), f"set {kind} that is " + " and ".join(parts)


_EXPECTED = {
    "string_type": ("text", 'put it in "double quotes"'),
    "int_type": ("a whole number", "write a whole number without quotes"),
    "int_from_float": ("a whole number", "write a whole number without quotes or decimals"),
    "int_parsing": ("a whole number", "write a whole number without quotes"),
    "float_type": ("a number", "write a number without quotes"),
    "float_parsing": ("a number", "write a number without quotes"),
    "bool_type": ("true or false", "write true or false without quotes"),
    "bool_parsing": ("true or false", "write true or false without quotes"),
    "list_type": ("a list", "write a list in square brackets, e.g. [1, 2]"),
    "dict_type": ("a table", "write a [section] or an inline table { key = value }"),
    "model_type": ("a table", "write a [section] or an inline table { key = value }"),
    "model_attributes_type": ("a table", "write a [section] or an inline table { key = value }"),
}


def _problem(
    error: ErrorDetails, model: type[BaseModel], key_of: Any, env: Mapping[str, str]
) -> str:
    loc = list(error["loc"])
    kind = error["type"]
    value = error.get("input")
    note = _env_note(loc, env)
    secret_shaped = any(isinstance(part, str) and part.endswith("_env") for part in loc)
    got = "" if secret_shaped else f" (got {_show(value)})"
    key = key_of(loc)
    if kind == "extra_forbidden":
        parent, _ = _annotation_at(model, loc[:-1])
        is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
        known = [
            name
            for name in (parent.model_fields if is_model else ())
            if not (parent is Character and name in Character.LOADER_KEYS)
        ]
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
        return f"{key}: unknown key{note}; fix: remove it or correct the spelling ({hint})"
    if kind == "missing":
        return f"{key}: required but missing; fix: add {loc[-1]} = ... here"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        options = re.findall(r"'([^']*)'", expected)
        close = (
            difflib.get_close_matches(str(value), options, n=1) if isinstance(value, str) else []
        )
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        listed = ", ".join(f'"{option}"' for option in options)
        return f"{key}: must be one of {listed}{got}{note}; fix: use one of them{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        annotation, meta = _annotation_at(model, loc)
        what, fix = _range_text(annotation, meta)
        return f"{key}: {what}{got}{note}; fix: {fix}"
    if kind in ("string_too_short", "too_short"):
        return f"{key}: must not be empty{note}; fix: write a non-empty value"
    if kind == "string_pattern_mismatch":
        return (
            f"{key}: must be the NAME of an environment variable (letters, digits, _){note}; "
            "fix: write the variable's name here, and put the secret itself in that variable"
        )
    if kind == "value_error":
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
        if note and "; fix:" in reason:
            reason = reason.replace("; fix:", f"{note}; fix:", 1)
        return f"{key}: {reason}"
    if kind in _EXPECTED:
        what, fix = _EXPECTED[kind]
        return f"{key}: must be {what}{got}{note}; fix: {fix}"
    return f"{key}: {error['msg']}{got}{note}; fix: correct this value"


def _problems(
    err: ValidationError, model: type[BaseModel], key_of: Any, env: Mapping[str, str]
) -> list[str]:
    seen: list[str] = []
    for error in err.errors(include_url=False):
        line = _problem(error, model, key_of, env)
        if line not in seen:
            seen.append(line)
    return seen
