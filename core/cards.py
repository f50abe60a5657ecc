"""Character cards (SillyTavern / Character Card V1, V2, V3) turned into salon character files.

A card is JSON, or a PNG carrying that JSON base64-encoded in a `chara` (V1/V2) or `ccv3` (V3)
text chunk. Parsing uses the standard library only, so importing a card needs nothing extra.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_FIELD_CHARS = 200_000
MAX_DEPTH = 64
USER_TEXT = "everyone"
"""What `{{user}}`/`<USER>` become: the profile is one static text shared by every chat."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")

_MAPPED = frozenset(
    {
        "name",
        "nickname",
        "description",
        "personality",
        "scenario",
        "system_prompt",
        "post_history_instructions",
        "first_mes",
        "mes_example",
        "alternate_greetings",
    }
)
_V1_MIRRORS = frozenset(
    {"name", "description", "personality", "scenario", "first_mes", "mes_example"}
)
_PLACEHOLDER = re.compile(r"\{\{(char|user)\}\}|<(bot|char|user)>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{original\}\}", re.IGNORECASE)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOP_ORDER = ("name", "aliases", "greeting", "alternate_greetings", "profile")
_MULTILINE_KEYS = frozenset({"profile"})


class CardError(ValueError):
    """A card that cannot be used; the message is one line, `"<file>: <problem>"`."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(" ".join(f"{source}: {problem}".split()))


def read_card_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw card object from a .json file or a .png (a `ccv3` chunk wins over `chara`)."""
    source = os.fspath(path)
    raw = _read_limited(Path(path), source)
    if raw.startswith(PNG_SIGNATURE):
        keyword, payload = _card_chunk(raw, source)
        return _parse_json(
            _decode_payload(payload, source, keyword), source, f"the '{keyword}' chunk"
        )
    if Path(source).suffix.lower() == ".png" or raw.startswith(b"\x89PNG"):
        raise CardError(source, "not a PNG image (the PNG signature is missing or damaged)")
    return _parse_json(raw, source, "the file")


def card_to_character(
    card: Mapping[str, Any], *, source: str, user: str = USER_TEXT
) -> dict[str, Any]:
    """Map a V1/V2/V3 card to salon character-file keys; whatever is not mapped goes to `card`."""
    if not isinstance(card, Mapping):
        raise CardError(source, "a character card must be a JSON object")
    clean = _clean(card, "", source, 0)
    data_obj = clean.get("data")
    if isinstance(data_obj, dict):
        data, prefix = data_obj, "data."
    elif "spec" in clean:
        raise CardError(source, f"spec {clean['spec']!r} but no 'data' object")
    else:
        data, prefix = clean, ""

    name = _single_line(_text(data, "name", prefix, source))
    if not name:
        raise CardError(source, f"{prefix}name is missing or empty — a character needs a name")
    nickname = _single_line(_text(data, "nickname", prefix, source))
    shown = nickname or name

    def resolve(text: str) -> str:
        return _resolve_macros(text, shown, user).strip()

    def field(key: str) -> str:
        return resolve(_text(data, key, prefix, source))

    personality, scenario, example = field("personality"), field("scenario"), field("mes_example")
    parts = [
        field("description"),
        f"Personality: {personality}" if personality else "",
        f"Scenario: {scenario}" if scenario else "",
        _ORIGINAL.sub("", field("system_prompt")).strip(),
        _ORIGINAL.sub("", field("post_history_instructions")).strip(),
        f"Example dialogue:\n{example}" if example else "",
    ]
    profile = "\n\n".join(part for part in parts if part)
    if not profile:
        raise CardError(
            source,
            "the card has no description, personality, scenario, system prompt or example "
            "dialogue — nothing to build a profile from",
        )

    result: dict[str, Any] = {"name": name}
    result["aliases"] = [nickname] if nickname and nickname.casefold() != name.casefold() else []
    greeting = field("first_mes")
    if greeting:
        result["greeting"] = greeting
    result["alternate_greetings"] = [
        g
        for g in (resolve(t) for t in _text_list(data, "alternate_greetings", prefix, source))
        if g
    ]
    result["profile"] = profile
    result["card"] = _unknown_fields(clean, data)
    return result


def load_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a card file and return character-file fields (what core.config's resolver validates)."""
    return card_to_character(read_card_json(path), source=os.fspath(path))


def character_toml(data: Mapping[str, Any]) -> str:
    """A hand-editable TOML character file that `tomllib.loads` turns back into `data`.

    None values are left out (TOML has no null); `profile` is always a multi-line block.
    """
    lines = ["# salon character file: edit freely. `profile` is the system message, sent as is."]
    simple = [k for k, v in data.items() if v is not None and not _is_table(v)]
    simple.sort(key=lambda k: _TOP_ORDER.index(k) if k in _TOP_ORDER else len(_TOP_ORDER))
    for key in simple:
        lines.append(_key_value(key, data[key], multiline=key in _MULTILINE_KEYS))
    tables = [k for k, v in data.items() if v is not None and _is_table(v)]
    tables.sort(key=lambda k: k == "card")
    for key in tables:
        lines.append("")
        if key == "card":
            lines.append("# Card fields salon does not use (lorebook included), kept as they were.")
        _emit_table([key], data[key], lines)
    return "\n".join(lines) + "\n"


def card_slug(name: str) -> str:
    """The file stem for a character name: ASCII snake case, or `card_<sha1 prefix>` otherwise."""
    if name.isascii():
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:64].rstrip("_")
        if slug:
            return slug
    return "card_" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]


def import_card(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    user: str = USER_TEXT,
) -> Path:
    """Write `out_dir/<slug>.toml` from a card; an existing file is kept unless `overwrite`."""
    source = os.fspath(path)
    data = card_to_character(read_card_json(path), source=source, user=user)
    origin = re.sub(r"[\x00-\x1f\x7f]", "?", Path(source).name)
    text = f"# Imported from the character card {origin} by `salon import-card`.\n"
    text += character_toml(data)
    target = Path(out_dir) / f"{card_slug(data['name'])}.toml"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        else:
            with target.open("x", encoding="utf-8") as handle:
                handle.write(text)
    except FileExistsError:
        raise CardError(
            str(target), "already exists; refusing to overwrite it (--force replaces it)"
        ) from None
    except OSError as exc:
        raise CardError(str(target), f"cannot write: {exc.strerror or exc}") from None
    return target


def _read_limited(path: Path, source: str) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise CardError(source, "is a directory, not a character card")
        if size > MAX_FILE_BYTES:
            raise CardError(source, f"{_megabytes(size)} is over the 10 MB limit for a card")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise CardError(source, "no such file") from None
    except OSError as exc:
        raise CardError(source, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CardError(source, f"{_megabytes(len(raw))} is over the 10 MB limit for a card")
    return raw


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _card_chunk(raw: bytes, source: str) -> tuple[str, bytes]:
    """The text of the `ccv3` chunk, else the `chara` one; CRCs are checked for those only."""
    found: dict[str, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while pos < len(raw):
        header = raw[pos : pos + 8]
        length = struct.unpack(">I", header[:4])[0] if len(header) == 8 else 0
        end = pos + 12 + length
        if len(header) < 8 or end > len(raw):
            if found:
                break
            raise CardError(source, f"truncated PNG: the chunk at byte {pos} runs past the end")
        ctype, body = header[4:], raw[pos + 8 : pos + 8 + length]
        if ctype in _TEXT_CHUNKS:
            keyword, _, rest = body.partition(b"\0")
            word = keyword.decode("latin-1").lower()
            if word in CARD_KEYWORDS and word not in found:
                (crc,) = struct.unpack(">I", raw[end - 4 : end])
                if zlib.crc32(ctype + body) != crc:
                    raise CardError(
                        source,
                        f"bad CRC in the {ctype.decode()} chunk '{word}' — the PNG is damaged",
                    )
                found[word] = _chunk_text(ctype, rest, source, word)
        if ctype == b"IEND":
            break
        pos = end
    for word in CARD_KEYWORDS:
        if word in found:
            return word, found[word]
    raise CardError(source, "no 'chara' or 'ccv3' tEXt chunk — not a character card PNG")


def _chunk_text(ctype: bytes, rest: bytes, source: str, word: str) -> bytes:
    if ctype == b"tEXt":
        return rest
    if ctype == b"zTXt":
        return _inflate(rest[1:], source, word)
    flag, text = rest[:1], rest[2:].split(b"\0", 2)
    if len(text) < 3:
        raise CardError(source, f"the iTXt chunk '{word}' is malformed")
    return _inflate(text[2], source, word) if flag == b"\x01" else text[2]


def _inflate(data: bytes, source: str, word: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_FILE_BYTES + 1)
    except zlib.error:
        raise CardError(source, f"the compressed '{word}' chunk is corrupt") from None
    if len(out) > MAX_FILE_BYTES:
        raise CardError(source, f"the '{word}' chunk unpacks to over the 10 MB limit")
    return out


def _decode_payload(payload: bytes, source: str, word: str) -> bytes:
    """Base64 of UTF-8 JSON, as the specs say; raw JSON text is accepted too."""
    text = payload.strip()
    if text.startswith(b"{"):
        return text
    compact = re.sub(rb"\s+", b"", text)
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CardError(source, f"the '{word}' chunk is not valid base64") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in JSON")


def _parse_json(raw: bytes, source: str, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(source, f"{what} is not UTF-8 text (bad byte at {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CardError(
            source, f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise CardError(source, f"{what} is JSON nested too deeply") from None
    except ValueError as exc:
        raise CardError(source, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else "a single value"
        raise CardError(source, f"{what} holds {kind}, not a JSON object — not a character card")
    return value


def _clean(value: Any, path: str, source: str, depth: int) -> Any:
    """Check limits and make the card TOML-safe: nulls dropped, lone surrogates replaced."""
    if depth > MAX_DEPTH:
        raise CardError(source, f"{path or 'the card'} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            raise CardError(
                source, f"{path} has {len(value):,} characters, over the {MAX_FIELD_CHARS:,} limit"
            )
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if item is not None:
                out[str(key)] = _clean(
                    item, f"{path}.{key}" if path else str(key), source, depth + 1
                )
        return out
    if isinstance(value, list | tuple):
        return [
            _clean(item, f"{path}[{i}]", source, depth + 1)
            for i, item in enumerate(value)
            if item is not None
        ]
    raise CardError(source, f"{path}: unsupported value of type {type(value).__name__}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _text(data: Mapping[str, Any], field: str, prefix: str, source: str) -> str:
    value = data.get(field, "")
    if not isinstance(value, str):
        raise CardError(source, f"{prefix}{field} must be text, got {_kind(value)}")
    return value


def _text_list(data: Mapping[str, Any], field: str, prefix: str, source: str) -> list[str]:
    value = data.get(field, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CardError(source, f"{prefix}{field} must be a list of texts")
    return value


def _single_line(text: str) -> str:
    return " ".join(text.split())


def _resolve_macros(text: str, char: str, user: str) -> str:
    return _PLACEHOLDER.sub(
        lambda m: user if (m.group(1) or m.group(2)).lower() == "user" else char, text
    )


def _unknown_fields(card: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Unmapped fields at the place they had: top-level keys at the root, V2/V3 ones under `data`.

    The V1 copies a V2/V3 exporter puts at the top level (and top-level keys equal to their
    `data` twin) are dropped: `data` is what the specs say to read.
    """
    if data is card:
        return {k: v for k, v in card.items() if k not in _MAPPED}
    kept = {
        k: v
        for k, v in card.items()
        if k != "data" and k not in _V1_MIRRORS and not (k in data and data[k] == v)
    }
    rest = {k: v for k, v in data.items() if k not in _MAPPED}
    if rest:
        kept["data"] = rest
    return kept


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(map(_is_table, value))


def _emit_table(path: list[str], table: Mapping[str, Any], lines: list[str]) -> None:
    """A `[path]` table: plain keys first, then sub-tables, then arrays of tables."""
    lines.append(f"[{'.'.join(_key(part) for part in path)}]")
    _emit_body(path, table, lines)


def _emit_body(path: list[str], table: Mapping[str, Any], lines: list[str]) -> None:
    items = [(k, v) for k, v in table.items() if v is not None]
    for key, value in items:
        if not _is_table(value) and not _is_table_array(value):
            lines.append(_key_value(key, value))
    for key, value in items:
        if _is_table(value):
            lines.append("")
            lines.append(f"[{'.'.join(_key(p) for p in [*path, key])}]")
            _emit_body([*path, key], value, lines)
    for key, value in items:
        if _is_table_array(value):
            for element in value:
                lines.append("")
                lines.append(f"[[{'.'.join(_key(p) for p in [*path, key])}]]")
                _emit_body([*path, key], element, lines)


def _key_value(key: str, value: Any, *, multiline: bool = False) -> str:
    if multiline and isinstance(value, str):
        return f"{_key(key)} = {_multiline_string(value)}"
    return f"{_key(key)} = {_value(value, inline=False)}"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _basic_string(key)


def _value(value: Any, *, inline: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _multiline_string(value) if "\n" in value and not inline else _basic_string(value)
    if isinstance(value, Mapping):
        pairs = [f"{_key(k)} = {_value(v, inline=True)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    if isinstance(value, list | tuple):
        if any(item is None for item in value):
            raise ValueError("a list holding None cannot be written as TOML")
        rendered = [_value(item, inline=inline) for item in value]
        one_line = "[" + ", ".join(rendered) + "]"
        if inline or (len(one_line) <= 80 and not any("\n" in r for r in rendered)):
            return one_line
        return "[\n" + "".join(f"    {r},\n" for r in rendered) + "]"
    raise ValueError(f"a {type(value).__name__} cannot be written as TOML")


def _escape_char(ch: str) -> str:
    special = {"\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    if ch in special:
        return special[ch]
    if ch < " " or ch == "\x7f":
        return f"\\u{ord(ch):04X}"
    return ch


def _basic_string(text: str) -> str:
    return '"' + "".join('\\"' if ch == '"' else _escape_char(ch) for ch in text) + '"'


def _literal_ok(text: str) -> bool:
    return (
        "'''" not in text
        and not text.endswith("'")
        and not any((ch < " " and ch not in "\t\n") or ch == "\x7f" for ch in text)
    )


def _multiline_string(text: str) -> str:
    """A `'''` literal block when the text allows it (nothing escaped), else a `\"\"\"` block."""
    if _literal_ok(text):
        return "'''\n" + text + "'''"
    tail = len(text) - len(text.rstrip('"'))
    out: list[str] = []
    run = 0
    for i, ch in enumerate(text):
        if ch == '"':
            if run == 2 or i >= len(text) - tail:
                out.append('\\"')
                run = 0
            else:
                out.append('"')
                run += 1
            continue
        run = 0
        out.append(ch if ch in "\t\n" else _escape_char(ch))
    return '"""\n' + "".join(out) + '"""'
