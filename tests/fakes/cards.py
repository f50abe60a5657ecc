"""Character cards for tests: V1/V2/V3 card objects, and JSON/PNG files written with the stdlib."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

V1_FIELDS: dict[str, str] = {
    "name": "Mira",
    "description": "{{char}} is a lighthouse keeper who talks to <USER> about ships.",
    "personality": "Dry humour; patient.",
    "scenario": "A storm night at the lighthouse with {{user}}.",
    "first_mes": "*{{char}} sets down the lamp.* Evening, {{user}}.",
    "mes_example": "<START>\n{{user}}: Any ships tonight?\n{{char}}: Only the stubborn ones.",
}


def v1_card(**fields: Any) -> dict[str, Any]:
    """A V1 (TavernAI) card: the fields at the top level and no `spec`."""
    return {**V1_FIELDS, **fields}


def v2_data(**fields: Any) -> dict[str, Any]:
    """A V2 `data` object with every spec field set; override or add fields by keyword."""
    data: dict[str, Any] = {
        **V1_FIELDS,
        "creator_notes": "Works best with long replies.",
        "system_prompt": "{{original}}\nStay in character as {{char}}.",
        "post_history_instructions": "Keep {{char}}'s replies short. {{original}}",
        "alternate_greetings": ["Oh. {{user}}. Come in.", "  ", "*The foghorn sounds.*"],
        "character_book": {
            "name": "Coast",
            "entries": [
                {"keys": ["storm"], "content": "Storms last three days.", "enabled": True},
                {"keys": ["ship", "boat"], "content": "The Alba sank in 1911.", "id": 2},
            ],
        },
        "tags": ["sea", "slice of life"],
        "creator": "tester",
        "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "fav": False, "depth_prompt": {"depth": 4}},
    }
    data.update(fields)
    return data


def v2_card(*, mirror: bool = True, **fields: Any) -> dict[str, Any]:
    """A V2 card as SillyTavern exports it: `data`, plus V1 copies at the top when `mirror`."""
    data = v2_data(**fields)
    card: dict[str, Any] = {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    if mirror:
        card.update({key: data[key] for key in V1_FIELDS if key in data})
        card["tags"] = list(data.get("tags", []))
    return card


def v3_card(**fields: Any) -> dict[str, Any]:
    """A V3 card: V2's data plus the V3 fields (nickname, group greetings, assets, dates)."""
    extra: dict[str, Any] = {
        "nickname": "Mi",
        "group_only_greetings": ["Evening, all."],
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "creation_date": 1700000000,
        "modification_date": 1700000500,
        "source": ["https://example.invalid/mira"],
        "creator_notes_multilingual": {"en": "Long replies.", "ja": "長い返事。"},
    }
    extra.update(fields)
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": v2_data(**extra)}


def card_b64(card: Mapping[str, Any] | str) -> str:
    """base64(UTF-8 JSON), the value of a `chara`/`ccv3` chunk."""
    text = card if isinstance(card, str) else json.dumps(card, ensure_ascii=False)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def png_chunk(ctype: bytes, body: bytes, *, crc: int | None = None) -> bytes:
    """One PNG chunk: length, type, body, CRC-32 (a wrong `crc` damages it on purpose)."""
    value = zlib.crc32(ctype + body) if crc is None else crc
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", value)


def text_chunk(keyword: str, text: str, **kwargs: Any) -> bytes:
    return png_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text.encode("latin-1"), **kwargs)


def ztxt_chunk(keyword: str, text: str) -> bytes:
    body = keyword.encode("latin-1") + b"\0\0" + zlib.compress(text.encode("latin-1"))
    return png_chunk(b"zTXt", body)


def itxt_chunk(keyword: str, text: str, *, compressed: bool = False) -> bytes:
    payload = text.encode("utf-8")
    if compressed:
        payload = zlib.compress(payload)
    flag = b"\x01\x00" if compressed else b"\x00\x00"
    return png_chunk(b"iTXt", keyword.encode("latin-1") + b"\0" + flag + b"en\0\0" + payload)


def tiny_png(chunks: Sequence[bytes] = ()) -> bytes:
    """A valid 1x1 grayscale PNG with `chunks` inserted between IHDR and IDAT."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00\x80"))
    return PNG_SIGNATURE + ihdr + b"".join(chunks) + idat + png_chunk(b"IEND", b"")


def card_png(
    chara: Mapping[str, Any] | None = None, ccv3: Mapping[str, Any] | None = None
) -> bytes:
    """A PNG card the way exporters write it: `chara` and/or `ccv3` tEXt chunks of base64 JSON."""
    chunks = []
    if chara is not None:
        chunks.append(text_chunk("chara", card_b64(chara)))
    if ccv3 is not None:
        chunks.append(text_chunk("ccv3", card_b64(ccv3)))
    return tiny_png(chunks)


def write_json_card(path: Path, card: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(card, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_png_card(
    path: Path, chara: Mapping[str, Any] | None = None, ccv3: Mapping[str, Any] | None = None
) -> Path:
    path.write_bytes(card_png(chara, ccv3))
    return path
