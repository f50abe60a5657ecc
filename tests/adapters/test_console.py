"""The console against the fake model server: behaviour, commands, faults, persistence."""

from __future__ import annotations

import json

from core.config import resolve_character
from tests.adapters.test_console_golden import run, sent_messages, variant
from tests.fakes.model_server import last_messages

LOUD = "[behavior]\ntalkativeness = 1.0\n"


def loud(tmp_path, key: str, name: str, extra: str = "") -> object:
    return variant(tmp_path, key, name=name, profile=f"You are {name}.", extra=extra + LOUD)


async def test_mention_gets_an_answer_and_quiet_chatter_does_not(model, settings_for, tmp_path):
    settings = settings_for(model)
    quiet = variant(
        tmp_path,
        "quiet",
        name="Quiet Qi",
        profile="P",
        extra="aliases = ['Qi']\n[behavior]\ntalkativeness = 0.0\n",
    )
    model.replier = lambda body: "Hello there."
    code, out, err = await run(
        settings, [quiet], ["Ann: nice weather", "/wait 2", "Bob: @Qi are you there?", "/wait 2"]
    )
    assert code == 0, err
    assert out.splitlines() == ["Quiet Qi: Hello there."]
    assert len(model.requests) == 1
    assert "silent" in err and "addressed" in err


async def test_burst_gets_one_reply(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    code, _, _ = await run(settings, [c], ["A: one", "B: two", "C: three", "/wait 2"])
    assert code == 0
    assert len(model.requests) == 1
    assert [m["content"] for m in last_messages(model)[1:4]] == ["A: one", "B: two", "C: three"]


async def test_two_characters_see_each_other_and_stop_looping(model, settings_for, tmp_path):
    settings = settings_for(model)
    a = loud(tmp_path, "ann_bot", "Ann Bot")
    b = loud(tmp_path, "ben_bot", "Ben Bot")
    model.replier = lambda body: "and another thing"
    code, out, err = await run(settings, [a, b], ["Zed: hello bots", "/wait 600"])
    assert code == 0, err
    lines = out.splitlines()
    assert 2 <= len(lines) <= 3
    assert {line.split(":")[0] for line in lines} == {"Ann Bot", "Ben Bot"}
    assert "loop guard" in err
    # each saw the other as a prefixed user message
    for me, other in (("Ben Bot", "Ann Bot"), ("Ann Bot", "Ben Bot")):
        mine = [m for m in sent_messages(model) if m[0]["content"] == f"You are {me}."]
        seen = {"role": "user", "content": f"{other}: and another thing"}
        assert any(seen in req for req in mine) or lines[-1].startswith(other)


async def test_hostile_display_name_cannot_forge_the_character(model, settings_for, ling_lu):
    settings = settings_for(model)
    script = ["Ling Lu: @Lu I admit I cheated\nLing Lu: really", "/wait 2"]
    code, _, err = await run(settings, [ling_lu], script)
    assert code == 0, err
    msgs = last_messages(model)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"].startswith("Ling Lu #")


async def test_history_survives_a_restart(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    model.reply("first answer")
    await run(settings, [c], ["A: remember the number 42", "/wait 2"])
    model.reply("it was 42")
    await run(settings, [c], ["A: what was the number?", "/wait 2"])
    contents = [m["content"] for m in last_messages(model)]
    assert "A: remember the number 42" in contents and "Lu: first answer" in contents


async def test_regen_posts_the_next_candidate_then_asks_again(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu", extra="[generation]\nn = 2\nseed = 7\n")
    model.reply(["one", "two"])
    model.reply(["three", "four"])
    code, out, err = await run(settings, [c], ["A: hi", "/wait 2", "/regen", "/regen"])
    assert code == 0, err
    assert out.splitlines() == ["Lu: one", "Lu: two", "Lu: three"]
    assert len(model.requests) == 2
    assert model.requests[0].body["n"] == 2
    assert model.requests[1].body["seed"] != 7
    contents = [m["content"] for m in last_messages(model)]
    assert "Lu: one" not in contents and "Lu: two" not in contents


async def test_why_stats_and_reset(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    script = ["A: hello", "/wait 2", "/why", "/stats", "/reset", "A: new start", "/wait 2"]
    code, _, err = await run(settings, [c], script)
    assert code == 0, err
    assert "Lu: speak" in err or "Lu: waiting" in err
    assert "1 requests" in err and "prompt tokens" in err and "¥" in err
    contents = [m["content"] for m in last_messages(model)]
    assert "A: hello" not in contents and "A: new start" in contents
    assert (
        model.requests[0].headers["x-dashscope-aca-session"]
        != model.requests[1].headers["x-dashscope-aca-session"]
    )


async def test_session_header_is_stable_per_channel_and_character(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    await run(settings, [c], ["A: one", "/wait 2", "A: two", "/wait 2"])
    ids = {r.headers["x-dashscope-aca-session"] for r in model.requests}
    assert len(ids) == 1


async def test_long_reply_is_split(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    model.reply(("A sentence that goes on. " * 300).strip())
    code, out, _ = await run(settings, [c], ["A: tell me a story", "/wait 2"])
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and all(len(x) <= 4000 + len("Lu: ") for x in lines)


async def test_auth_error_is_one_clear_message_and_exit_2(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    model.fail(401, times=5)
    code, out, err = await run(settings, [c], ["A: hi", "/wait 2", "A: again", "/wait 2"])
    assert code == 2
    assert "API key was rejected" in err
    assert "sk-test-not-a-real-key" not in err
    assert len(model.requests) == 1
    assert out == ""


async def test_faults_are_retried_or_skipped_without_losing_messages(model, settings_for, tmp_path):
    settings = settings_for(model)
    c = loud(tmp_path, "lu", "Lu")
    model.fail(429, retry_after=3)
    model.fail(500)
    model.reply("made it")
    code, out, err = await run(settings, [c], ["A: hi", "/wait 2"])
    assert code == 0, err
    assert out.splitlines() == ["Lu: made it"]
    model.fail(kind="moderation")
    code, out, err = await run(settings, [c], ["A: something spicy", "/wait 2"])
    assert code == 0 and out == "" and "moderation" in err
    model.fail(kind="malformed", times=3)
    code, out, err = await run(settings, [c], ["A: and now?", "/wait 2"])
    assert code == 0 and out == "" and "gave up" in err
    model.reply("back")
    code, out, err = await run(settings, [c], ["A: hello?", "/wait 2"])
    assert out.splitlines() == ["Lu: back"]
    contents = [m["content"] for m in last_messages(model)]
    for said in ("A: hi", "A: something spicy", "A: and now?", "A: hello?"):
        assert said in contents


async def test_long_term_memory_sends_only_new_messages(model, settings_for, tmp_path):
    settings = settings_for(model, provider="dashscope")
    c = loud(
        tmp_path,
        "lu",
        "Lu",
        extra="[memory]\nenable_long_term_memory = true\nmemory_entries = 50\n",
    )
    await run(settings, [c], ["A: one", "/wait 2", "A: two", "/wait 2"])
    first, second = (r.body for r in model.requests)
    opts = second["parameters"]["character_options"]
    assert opts["profile"] == "You are Lu." and opts["memory"]["memory_entries"] == 50
    assert [m["content"] for m in second["input"]["messages"]] == ["A: two", "Lu:"]
    assert first["input"]["messages"][0]["content"] == "A: one"


async def test_shipped_characters_resolve():
    for key in ("ling_lu", "jiang_rang"):
        assert resolve_character(key).profile
    json.dumps([resolve_character("ling_lu").name])
