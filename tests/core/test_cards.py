"""Character cards V1/V2/V3 as JSON and PNG: conversion, TOML files, import, and bad cards."""

from __future__ import annotations

import hashlib
import io
import json
import tomllib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.cards import (
    MAX_FIELD_CHARS,
    MAX_FILE_BYTES,
    CardError,
    card_slug,
    card_to_character,
    character_toml,
    import_card,
    load_card,
    read_card_json,
)
from tests.fakes.cards import (
    card_b64,
    card_png,
    itxt_chunk,
    png_chunk,
    text_chunk,
    tiny_png,
    v1_card,
    v2_card,
    v3_card,
    write_json_card,
    write_png_card,
    ztxt_chunk,
)

EXAMPLE = (
    "Example dialogue:\n<START>\neveryone: Any ships tonight?\n{char}: Only the stubborn ones."
)
PROFILE_V1 = (
    "Mira is a lighthouse keeper who talks to everyone about ships.\n\n"
    "Personality: Dry humour; patient.\n\n"
    "Scenario: A storm night at the lighthouse with everyone.\n\n" + EXAMPLE.format(char="Mira")
)
PROFILE_V2 = (
    "Mira is a lighthouse keeper who talks to everyone about ships.\n\n"
    "Personality: Dry humour; patient.\n\n"
    "Scenario: A storm night at the lighthouse with everyone.\n\n"
    "Stay in character as Mira.\n\n"
    "Keep Mira's replies short.\n\n" + EXAMPLE.format(char="Mira")
)
PROFILE_V3 = PROFILE_V2.replace("Mira", "Mi")
BOOK = {
    "name": "Coast",
    "entries": [
        {"keys": ["storm"], "content": "Storms last three days.", "enabled": True},
        {"keys": ["ship", "boat"], "content": "The Alba sank in 1911.", "id": 2},
    ],
}
V2_KEPT = {
    "creator_notes": "Works best with long replies.",
    "character_book": BOOK,
    "tags": ["sea", "slice of life"],
    "creator": "tester",
    "character_version": "1.2",
    "extensions": {"talkativeness": "0.5", "fav": False, "depth_prompt": {"depth": 4}},
}
V3_KEPT = {
    **V2_KEPT,
    "group_only_greetings": ["Evening, all."],
    "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
    "creation_date": 1700000000,
    "modification_date": 1700000500,
    "source": ["https://example.invalid/mira"],
    "creator_notes_multilingual": {"en": "Long replies.", "ja": "長い返事。"},
}
EXPECTED: dict[str, dict[str, Any]] = {
    "v1": {
        "name": "Mira",
        "aliases": [],
        "greeting": "*Mira sets down the lamp.* Evening, everyone.",
        "alternate_greetings": [],
        "profile": PROFILE_V1,
        "card": {"avatar": "none", "chat": "Mira - 2024-01-01"},
    },
    "v2": {
        "name": "Mira",
        "aliases": [],
        "greeting": "*Mira sets down the lamp.* Evening, everyone.",
        "alternate_greetings": ["Oh. everyone. Come in.", "*The foghorn sounds.*"],
        "profile": PROFILE_V2,
        "card": {"spec": "chara_card_v2", "spec_version": "2.0", "avatar": "none", "data": V2_KEPT},
    },
    "v3": {
        "name": "Mira",
        "aliases": ["Mi"],
        "greeting": "*Mi sets down the lamp.* Evening, everyone.",
        "alternate_greetings": ["Oh. everyone. Come in.", "*The foghorn sounds.*"],
        "profile": PROFILE_V3,
        "card": {"spec": "chara_card_v3", "spec_version": "3.0", "data": V3_KEPT},
    },
}


def make_card(version: str) -> dict[str, Any]:
    if version == "v1":
        return v1_card(avatar="none", chat="Mira - 2024-01-01")
    if version == "v2":
        return {**v2_card(), "avatar": "none"}
    return v3_card()


def write_card(tmp_path: Path, version: str, container: str) -> Path:
    card = make_card(version)
    if container == "json":
        return write_json_card(tmp_path / f"{version}.json", card)
    if version == "v3":
        backfill = v2_card(name="Mira (V2 backfill)")
        return write_png_card(tmp_path / f"{version}.png", chara=backfill, ccv3=card)
    return write_png_card(tmp_path / f"{version}.png", chara=card)


@pytest.mark.parametrize("container", ["json", "png"])
@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_every_version_and_container_maps_every_field(
    tmp_path: Path, version: str, container: str
) -> None:
    path = write_card(tmp_path, version, container)
    assert read_card_json(path) == make_card(version)
    character = load_card(path)
    assert character == EXPECTED[version]
    assert tomllib.loads(character_toml(character)) == character


def test_v3_png_prefers_ccv3_whatever_the_chunk_order(tmp_path: Path) -> None:
    ccv3 = text_chunk("ccv3", card_b64(v3_card()))
    chara = text_chunk("chara", card_b64(v2_card(name="Old")))
    path = tmp_path / "order.png"
    path.write_bytes(tiny_png([ccv3, chara]))
    assert load_card(path) == EXPECTED["v3"]


@pytest.mark.parametrize(
    "chunk",
    [
        ztxt_chunk("chara", card_b64(v2_card())),
        itxt_chunk("chara", card_b64(v2_card())),
        itxt_chunk("chara", card_b64(v2_card()), compressed=True),
        text_chunk("Chara", card_b64(v2_card())),
        text_chunk(
            "chara",
            "\n".join(card_b64(v2_card()).rstrip("=")[i : i + 76] for i in range(0, 99999, 76)),
        ),
        itxt_chunk("chara", json.dumps(v2_card(), ensure_ascii=False)),
    ],
    ids=["zTXt", "iTXt", "iTXt-compressed", "keyword-case", "wrapped-unpadded-base64", "raw-json"],
)
def test_png_text_chunk_variants_are_read(tmp_path: Path, chunk: bytes) -> None:
    path = tmp_path / "variant.png"
    path.write_bytes(tiny_png([chunk]))
    assert read_card_json(path) == v2_card()


def test_json_file_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(v1_card()).encode())
    assert load_card(path)["name"] == "Mira"


def test_placeholders_are_resolved_case_insensitively_and_other_macros_kept() -> None:
    card = v1_card(
        description=(
            "{{Char}} <bot> <CHAR> {{CHAR}} / {{USER}} <User> {{user}} / {{random:a,b}} {{ char }}"
        ),
        personality="",
        scenario="",
        mes_example="",
    )
    assert card_to_character(card, source="c")["profile"] == (
        "Mira Mira Mira Mira / everyone everyone everyone / {{random:a,b}} {{ char }}"
    )
    named = card_to_character(card, source="c", user="Alex")
    assert named["profile"].split(" / ")[1] == "Alex Alex Alex"
    assert named["greeting"] == "*Mira sets down the lamp.* Evening, Alex."


def test_a_name_that_looks_like_a_placeholder_is_not_resolved_again() -> None:
    card = v1_card(name="<USER>", description="I am {{char}}.", mes_example="")
    assert card_to_character(card, source="c")["profile"].startswith("I am <USER>.")


def test_original_placeholder_is_stripped_and_empty_sections_skipped() -> None:
    card = v2_card(
        personality="",
        scenario="   ",
        system_prompt="{{ORIGINAL}}",
        post_history_instructions="{{original}}\nNo OOC.",
        mes_example="",
        first_mes="",
        alternate_greetings=[],
    )
    character = card_to_character(card, source="c")
    assert character["profile"] == (
        "Mira is a lighthouse keeper who talks to everyone about ships.\n\nNo OOC."
    )
    assert "greeting" not in character
    assert character["alternate_greetings"] == []


def test_profile_section_order_and_labels() -> None:
    card = v2_card(
        description="D",
        personality="P",
        scenario="S",
        system_prompt="SP",
        post_history_instructions="PHI",
        mes_example="E1\nE2",
    )
    profile = card_to_character(card, source="c")["profile"]
    assert profile == "D\n\nPersonality: P\n\nScenario: S\n\nSP\n\nPHI\n\nExample dialogue:\nE1\nE2"


def test_nulls_are_dropped_and_null_mapped_fields_count_as_empty() -> None:
    card = v2_card(creator_notes=None, tags=["a", None], personality=None, extensions={"x": None})
    character = card_to_character(card, source="c")
    assert "creator_notes" not in character["card"]["data"]
    assert character["card"]["data"]["tags"] == ["a"]
    assert character["card"]["data"]["extensions"] == {}
    assert "Personality:" not in character["profile"]


def test_top_level_fields_differing_from_data_are_kept_but_v1_copies_are_not() -> None:
    card = {**v2_card(), "tags": ["other"], "description": "stale V1 copy", "fav": True}
    kept = card_to_character(card, source="c")["card"]
    assert kept["tags"] == ["other"]
    assert kept["fav"] is True
    assert "description" not in kept


def test_name_whitespace_is_collapsed_and_same_nickname_is_no_alias() -> None:
    card = v3_card(name="  Mira\n  Lake ", nickname="mira lake")
    character = card_to_character(card, source="c")
    assert character["name"] == "Mira Lake"
    assert character["aliases"] == []


def test_profile_is_written_as_an_unescaped_block(tmp_path: Path) -> None:
    character = load_card(write_card(tmp_path, "v2", "png"))
    text = character_toml(character)
    assert "profile = '''\n" + PROFILE_V2 + "'''\n" in text
    assert text.index("name =") < text.index("profile =") < text.index("[card]")
    assert "[[card.data.character_book.entries]]" in text


@pytest.mark.parametrize(
    "profile",
    [
        "ends with a quote'",
        "has ''' inside",
        'back\\slash and """ triple and ending ""',
        "carriage\r\nreturn",
        "nul\x00 and del\x7f and esc\x1b",
        "\nstarts with a newline",
        '"',
    ],
)
def test_profiles_needing_escapes_round_trip(profile: str) -> None:
    data = {"name": "X", "aliases": [], "alternate_greetings": [], "profile": profile, "card": {}}
    assert tomllib.loads(character_toml(data)) == data


def test_none_values_are_left_out_of_the_toml() -> None:
    text = character_toml({"name": "X", "greeting": None, "profile": "p", "card": {"a": None}})
    assert tomllib.loads(text) == {"name": "X", "profile": "p", "card": {}}


_KEYS = st.text(max_size=8)
_SCALARS = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(min_size=1, max_size=30),
    profile=st.text(max_size=200),
    greetings=st.lists(st.text(max_size=60), max_size=3),
    card=st.dictionaries(_KEYS, _VALUES, max_size=6),
)
def test_character_toml_round_trips(
    name: str, profile: str, greetings: list[str], card: dict[str, Any]
) -> None:
    data = {
        "name": name,
        "aliases": greetings[:1],
        "greeting": profile[:20],
        "alternate_greetings": greetings,
        "profile": profile,
        "card": card,
    }
    assert tomllib.loads(character_toml(data)) == data


def test_import_card_writes_a_loadable_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_card(tmp_path, "v3", "png")
    out_dir = tmp_path / "bots" / "new"
    written = import_card(path, out_dir)
    assert written == out_dir / "mira.toml"
    text = written.read_text(encoding="utf-8")
    assert text.startswith("# Imported from the character card v3.png by `salon import-card`.\n")
    assert tomllib.loads(text) == EXPECTED["v3"]

    written.write_text("# hand edited\n", encoding="utf-8")
    with pytest.raises(CardError) as err:
        import_card(path, out_dir)
    assert (
        str(err.value)
        == f"{written}: already exists; refusing to overwrite it (--force replaces it)"
    )
    assert written.read_text(encoding="utf-8") == "# hand edited\n"

    assert import_card(path, out_dir, overwrite=True) == written
    assert tomllib.loads(written.read_text(encoding="utf-8")) == EXPECTED["v3"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["mira.toml"]


def test_import_card_names_non_ascii_characters_by_hash(tmp_path: Path) -> None:
    path = write_json_card(tmp_path / "ling.json", v2_card(name="凌露"))
    written = import_card(path, tmp_path)
    assert written.name == f"card_{hashlib.sha1('凌露'.encode()).hexdigest()[:8]}.toml"
    assert tomllib.loads(written.read_text(encoding="utf-8"))["name"] == "凌露"


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Ling Lu", "ling_lu"),
        ("  Dr. Who?! ", "dr_who"),
        ("a" * 80, "a" * 64),
        ("R2-D2", "r2_d2"),
    ],
)
def test_card_slug(name: str, slug: str) -> None:
    assert card_slug(name) == slug


@pytest.mark.parametrize("name", ["Zoë", "!!!", "凌露"])
def test_card_slug_falls_back_to_a_hash(name: str) -> None:
    assert card_slug(name) == "card_" + hashlib.sha1(name.encode()).hexdigest()[:8]


def _bytes_case(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


BAD_FILES: list[tuple[str, str, bytes, str]] = [
    (
        "not-png",
        "x.png",
        b"GIF89a\x01\x00",
        "not a PNG image (the PNG signature is missing or damaged)",
    ),
    (
        "no-chunk",
        "x.png",
        tiny_png([text_chunk("Comment", "hello")]),
        "no 'chara' or 'ccv3' tEXt chunk — not a character card PNG",
    ),
    (
        "bad-base64",
        "x.png",
        tiny_png([text_chunk("chara", "@@not base64@@")]),
        "the 'chara' chunk is not valid base64",
    ),
    (
        "bad-json-in-png",
        "x.png",
        tiny_png([text_chunk("ccv3", card_b64("{not json"))]),
        "the 'ccv3' chunk is not valid JSON: Expecting property name enclosed in double quotes"
        " (line 1, column 2)",
    ),
    (
        "bad-crc",
        "x.png",
        tiny_png([text_chunk("chara", card_b64(v2_card()), crc=0)]),
        "bad CRC in the tEXt chunk 'chara' — the PNG is damaged",
    ),
    (
        "truncated",
        "x.png",
        tiny_png()[:20],
        "truncated PNG: the chunk at byte 8 runs past the end",
    ),
    (
        "corrupt-ztxt",
        "x.png",
        tiny_png([png_chunk(b"zTXt", b"chara\0\0not zlib")]),
        "the compressed 'chara' chunk is corrupt",
    ),
    (
        "ztxt-bomb",
        "x.png",
        tiny_png([png_chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (MAX_FILE_BYTES + 10)))]),
        "the 'chara' chunk unpacks to over the 10 MB limit",
    ),
    (
        "bad-itxt",
        "x.png",
        tiny_png([png_chunk(b"iTXt", b"chara\0\0\0no-separators")]),
        "the iTXt chunk 'chara' is malformed",
    ),
    (
        "bad-json-file",
        "x.json",
        b'{"name": "Mira",}',
        "the file is not valid JSON: Expecting property name enclosed in double quotes"
        " (line 1, column 17)",
    ),
    ("not-utf8", "x.json", b'{"name": "\xff"}', "the file is not UTF-8 text (bad byte at 10)"),
    ("nan", "x.json", b'{"name": NaN}', "the file is not valid JSON: NaN is not allowed in JSON"),
    (
        "array",
        "x.json",
        b"[1, 2]",
        "the file holds an array, not a JSON object — not a character card",
    ),
    (
        "recursion",
        "x.json",
        b'{"name": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "the file is JSON nested too deeply",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_files_give_one_clear_error(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    path = _bytes_case(tmp_path, name, content)
    with pytest.raises(CardError) as err:
        load_card(path)
    assert str(err.value) == f"{path}: {problem}"


BAD_CARDS: list[tuple[str, dict[str, Any], str]] = [
    ("v1-no-name", {"description": "x"}, "name is missing or empty — a character needs a name"),
    (
        "v2-blank-name",
        v2_card(name="  \n"),
        "data.name is missing or empty — a character needs a name",
    ),
    (
        "v2-null-name",
        v2_card(name=None),
        "data.name is missing or empty — a character needs a name",
    ),
    ("name-number", v2_card(name=7), "data.name must be text, got a number"),
    ("description-list", v2_card(description=["a"]), "data.description must be text, got a list"),
    (
        "greetings-text",
        v2_card(alternate_greetings="hi"),
        "data.alternate_greetings must be a list of texts",
    ),
    (
        "spec-no-data",
        {"spec": "chara_card_v2", "name": "x"},
        "spec 'chara_card_v2' but no 'data' object",
    ),
    (
        "huge-field",
        v2_card(description="x" * (MAX_FIELD_CHARS + 1)),
        "data.description has 200,001 characters, over the 200,000 limit",
    ),
    (
        "huge-unknown-field",
        v2_card(extensions={"notes": "y" * (MAX_FIELD_CHARS + 1)}),
        "data.extensions.notes has 200,001 characters, over the 200,000 limit",
    ),
    (
        "empty-profile",
        v1_card(description="", personality="", scenario="", mes_example=""),
        "the card has no description, personality, scenario, system prompt or example dialogue"
        " — nothing to build a profile from",
    ),
]


@pytest.mark.parametrize(
    ("card", "problem"), [case[1:] for case in BAD_CARDS], ids=[case[0] for case in BAD_CARDS]
)
def test_bad_cards_give_one_clear_error(tmp_path: Path, card: dict[str, Any], problem: str) -> None:
    path = write_png_card(tmp_path / "bad.png", chara=card)
    with pytest.raises(CardError) as err:
        load_card(path)
    assert str(err.value) == f"{path}: {problem}"


def test_deep_nesting_inside_a_card_is_refused() -> None:
    deep: Any = "leaf"
    for _ in range(70):
        deep = {"n": deep}
    with pytest.raises(
        CardError, match=r"^c: data\.extensions(\.n)+ is nested more than 64 levels"
    ):
        card_to_character(v2_card(extensions=deep), source="c")


def test_file_over_ten_megabytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(CardError) as err:
        load_card(path)
    assert str(err.value) == f"{path}: 10.0 MB is over the 10 MB limit for a card"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CardError) as err:
        load_card(tmp_path / "nope.png")
    assert str(err.value) == f"{tmp_path / 'nope.png'}: no such file"
    with pytest.raises(CardError) as err:
        load_card(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a directory, not a character card"


def test_truncation_after_the_card_chunk_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(card_png(chara=v1_card())[:-20])
    assert load_card(path)["name"] == "Mira"


def test_error_message_is_a_single_line() -> None:
    err = CardError("odd\nname.png", "problem\nwith lines")
    assert str(err) == "odd name.png: problem with lines"
    assert isinstance(err, ValueError)


def _resolver() -> Any:
    config = pytest.importorskip("core.config")
    resolve = getattr(config, "resolve_character", None)
    if resolve is None:
        pytest.skip("core.config.resolve_character does not exist yet")
    return resolve


@pytest.mark.parametrize("container", ["json", "png"])
def test_resolver_accepts_a_card_directly(tmp_path: Path, container: str) -> None:
    resolve = _resolver()
    character = resolve(str(write_card(tmp_path, "v2", container)))
    assert character.name == "Mira"
    assert character.profile == PROFILE_V2
    assert character.greeting == EXPECTED["v2"]["greeting"]
    assert list(character.alternate_greetings) == EXPECTED["v2"]["alternate_greetings"]
    assert character.card == EXPECTED["v2"]["card"]


def test_resolver_accepts_an_imported_card_file(tmp_path: Path) -> None:
    resolve = _resolver()
    written = import_card(write_card(tmp_path, "v3", "png"), tmp_path / "bots")
    character = resolve(str(written))
    assert character.name == "Mira"
    assert list(character.aliases) == ["Mi"]
    assert character.profile == PROFILE_V3
    assert character.card == EXPECTED["v3"]["card"]


async def _lines(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line + "\n"


async def test_card_profile_is_the_system_message_of_the_request(
    tmp_path: Path, model: Any, settings_for: Any
) -> None:
    resolve = _resolver()
    console = pytest.importorskip("adapters.console")
    from core.clock import VirtualClock
    from tests.fakes.model_server import last_messages

    character = resolve(str(write_card(tmp_path, "v2", "png")))
    model.reply(" Only the stubborn ones.")
    out, err = io.StringIO(), io.StringIO()
    code = await console.run_console(
        settings_for(model),
        [character],
        lines=_lines(["@Mira any ships tonight?", "/wait 5"]),
        clock=VirtualClock(),
        out=out,
        err=err,
        seed=1,
    )
    assert code == 0, err.getvalue()
    messages = last_messages(model)
    assert messages[0] == {"role": "system", "content": PROFILE_V2}
    assert messages[-1] == {"role": "assistant", "content": "Mira:", "partial": True}
    assert "Mira: Only the stubborn ones." in out.getvalue().splitlines()
