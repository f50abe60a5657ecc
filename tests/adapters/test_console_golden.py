"""The seed's example arrays, rebuilt byte for byte from console transcripts."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from adapters.console import run_console
from core.clock import VirtualClock
from core.config import Character, Settings
from tests import golden
from tests.conftest import character_file
from tests.fakes.model_server import FakeModelServer, last_messages


async def feed(lines: Iterable[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line + "\n"


async def run(
    settings: Settings, chars: list[Character], lines: list[str], **kw: Any
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await run_console(
        settings, chars, lines=feed(lines), clock=VirtualClock(), out=out, err=err, seed=1, **kw
    )
    return code, out.getvalue(), err.getvalue()


def variant(tmp_path: Path, key: str, *, name: str, profile: str, extra: str = "") -> Character:
    return character_file(
        tmp_path, key, f"name = {json.dumps(name)}\nprofile = {json.dumps(profile)}\n{extra}"
    )


def sent_messages(model: FakeModelServer) -> list[list[dict[str, object]]]:
    out = []
    for r in model.requests:
        body = r.body
        out.append(body["input"]["messages"] if "input" in body else body["messages"])
    return out


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_group_chat_array(model, settings_for, tmp_path, provider):
    settings = settings_for(model, provider=provider)
    lu = variant(
        tmp_path,
        "ling_lu",
        name="Ling Lu",
        profile=golden.LING_LU_PROFILE,
        extra="[behavior]\ntalkativeness = 1.0\n",
    )
    model.reply(golden.GROUP_CHAT[2]["content"].removeprefix("Ling Lu:"))
    model.reply(" " + golden.GROUP_CHAT[6]["content"].removeprefix("Ling Lu: "))
    model.reply("Alright, I'll come up with some good tunes then.")
    script = [
        golden.GROUP_CHAT[1]["content"],
        "/wait 2",
        golden.GROUP_CHAT[3]["content"],
        golden.GROUP_CHAT[4]["content"],
        golden.GROUP_CHAT[5]["content"],
        "/wait 2",
        "/wait 100",
    ]
    code, out, err = await run(settings, [lu], script)
    assert code == 0, err
    assert sent_messages(model)[-1] == golden.GROUP_CHAT
    assert len(model.requests) == 3
    assert out.splitlines() == [
        golden.GROUP_CHAT[2]["content"],
        golden.GROUP_CHAT[6]["content"],
        "Ling Lu: Alright, I'll come up with some good tunes then.",
    ]


async def test_direct_turns(model, settings_for, jiang_rang):
    settings = settings_for(model)
    turns = golden.DIRECT_TURNS
    model.reply(turns[1][3]["content"])
    model.reply(turns[2][5]["content"])
    model.reply("A story about you and me.")
    script = [
        turns[0][2]["content"],
        "/wait 2",
        turns[1][4]["content"],
        "/wait 2",
        turns[2][6]["content"],
        "/wait 2",
    ]
    code, out, err = await run(settings, [jiang_rang], script, direct=True)
    assert code == 0, err
    assert sent_messages(model) == turns
    assert out.splitlines()[0] == "Jiang Rang: Class monitor, what are you up to?"


async def test_direct_continuation_array(model, settings_for, tmp_path):
    settings = settings_for(model)
    jr = variant(
        tmp_path,
        "jiang_rang",
        name="Jiang Rang",
        profile=golden.JIANG_RANG_PROFILE,
        extra=f"greeting = {json.dumps(golden.CONTINUATION[1]['content'])}\n"
        "[behavior]\nmax_continuations = 3\ncontinue_after_s = 90\ncontinue_backoff = 2.0\n",
    )
    model.reply(golden.CONTINUATION[2]["content"])
    model.reply(golden.CONTINUATION[3]["content"])
    model.reply("(A slight smile on the lips) You're not thinking about me, are you?")
    code, _, err = await run(settings, [jr], ["/wait 100", "/wait 200", "/wait 400"], direct=True)
    assert code == 0, err
    msgs = sent_messages(model)
    assert len(msgs) == 3
    assert msgs[0] == [*golden.CONTINUATION[:2], golden.CONTINUATION[4]]
    assert msgs[-1] == golden.CONTINUATION


async def test_supplement_array(model, settings_for, tmp_path):
    settings = settings_for(model)
    jr = variant(
        tmp_path,
        "jiang_rang",
        name="Jiang Rang",
        profile=golden.SUPPLEMENT_PROFILE,
        extra=f"greeting = {json.dumps(golden.SUPPLEMENT[1]['content'])}\n",
    )
    model.reply("(Thinking for a moment) Since you love dumplings...")
    script = [
        f"/note {golden.SUPPLEMENT[2]['content']}",
        golden.SUPPLEMENT[3]["content"],
        "/wait 2",
    ]
    code, _, err = await run(settings, [jr], script, direct=True)
    assert code == 0, err
    assert last_messages(model) == golden.SUPPLEMENT
    # the note is one-off: the next request no longer carries it
    model.reply("Deal.")
    code, _, err = await run(settings, [jr], ["Sounds good", "/wait 2"], direct=True)
    assert code == 0, err
    assert all(m["role"] != "system" for m in last_messages(model)[1:])
