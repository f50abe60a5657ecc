"""Each benchmark at a tiny size: the figures it returns and prints are sane (never their speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import memory, pipeline, prompt_cache, startup
from bench.__main__ import SIZES, _names, main
from bench.common import CHARACTER_KEY, BenchResult, Figure, percentile
from bench.diagnose import diagnose
from bench.memstore import MemoryStore
from bench.prompt_cache import (
    CacheSize,
    _body,
    converse,
    prefix_stats,
    shared_prefix,
    sliding_window,
)
from bench.report import markdown, table
from core.types import Channel, Message, Participant


def _sane(result: BenchResult) -> None:
    assert result.figures
    for figure in result.figures:
        assert math.isfinite(figure.value), figure
        assert math.isfinite(figure.baseline) and figure.baseline > 0, figure
        assert figure.ratio == figure.value / figure.baseline
        assert (figure.met is None) == (figure.target == ""), figure
    assert all(math.isfinite(v) for v in result.details.values())


async def test_pipeline_answers_every_addressed_message_once(tmp_path: Path) -> None:
    size = pipeline.PipelineSize(6, 5, concurrency=3, budget_s=60.0, paced_s=0.2)
    result = await pipeline.run(size, workdir=tmp_path)
    _sane(result)
    d = result.details
    assert d["messages"] == 30 and d["stopped_early"] == 0
    assert d["addressed"] > 0
    assert d["replies"] == d["addressed"]
    assert d["answered_share"] == d["replies"] / 30
    assert d["flat_samples"] == d["replies"]  # each reply matched to its message
    assert d["flat_p50_ms"] <= d["flat_p99_ms"] <= d["flat_max_ms"]
    assert d["paced_messages"] >= 1 and d["paced_replies"] <= d["paced_messages"]
    assert d["paced_samples"] == d["paced_replies"]
    assert 0.0 <= d["paced_loop_busy"] <= 1.5  # CPU seconds of the loop thread per second
    assert 0.0 < d["paced_share_of_flat"] <= 0.5 + 1e-9
    assert d["quarter_rate"] == d["paced_rate"] / 2 and 0.0 <= d["quarter_loop_busy"] <= 1.5
    assert d["quarter_p50_ms"] <= d["quarter_p99_ms"] <= d["quarter_max_ms"]
    assert d["floor_autocommit_rows_s"] > 0 and d["floor_batched_rows_s"] > 0
    names = [f.name for f in result.figures]
    assert names[0] == "throughput" and result.figures[0].unit == "msg/s"


def test_workload_keeps_channel_order_and_addresses_a_share() -> None:
    messages = pipeline.workload(50, range(4), 0.1, seed=5)
    assert len(messages) == 200
    per_channel: dict[str, list[str]] = {}
    for m in messages:
        per_channel.setdefault(m.channel.id, []).append(m.id)
    assert all(ids == ["m0", "m1", "m2", "m3"] for ids in per_channel.values())
    hits = sum(1 for m in messages if m.addressed == frozenset({CHARACTER_KEY}))
    assert 0 < hits < 60
    assert all(not m.addressed or m.addressed == {CHARACTER_KEY} for m in messages)
    assert "Lu" not in " ".join(m.text for m in messages).split()


def _msg(role: str, content: str, partial: bool = False) -> dict[str, object]:
    return {"role": role, "content": content, **({"partial": True} if partial else {})}


def test_shared_prefix_counts_the_leading_identical_run_without_the_partial() -> None:
    system = _msg("system", "profile text here")
    a, b, c = _msg("user", "A: hi"), _msg("user", "B: yo"), _msg("assistant", "Lu: hey")
    speak = _msg("assistant", "Lu:", partial=True)
    first = [system, a, b, speak]
    grown = [system, a, b, c, _msg("user", "A: more"), speak]
    trimmed = [system, b, c, speak]
    from core.prompt import estimate_tokens

    def tokens(*ms: dict[str, object]) -> int:
        return sum(estimate_tokens(str(m["content"])) for m in ms)

    assert shared_prefix(first, grown) == tokens(system, a, b)
    assert shared_prefix(grown, trimmed) == tokens(system)
    assert shared_prefix(first, first) == tokens(system, a, b)
    assert _body(first) == first[:-1]
    stats = prefix_stats([("s", first), ("s", grown), ("other", trimmed), ("s", trimmed)])
    assert stats.requests == 4
    assert stats.total_tokens == tokens(*first) + tokens(*grown) + 2 * tokens(*trimmed)
    assert stats.shared_tokens == tokens(system, a, b) + tokens(system)
    assert 0 < stats.share < 1


async def test_baseline_replays_the_engine_requests_on_the_same_transcript(
    tmp_path: Path,
) -> None:
    talk = await converse(tmp_path, CacheSize(150, input_limit=600), seed=4)
    assert talk.recorded
    base = sliding_window(talk.settings, talk.character, talk.rows, talk.recorded)
    assert len(base) == len(talk.recorded)
    for recorded, (session, messages) in zip(talk.recorded, base, strict=True):
        assert session == recorded.session
        engine_body = [dict(m) for m in _body(recorded.messages)]
        base_body = [dict(m) for m in _body(messages)]
        assert engine_body[0] == base_body[0]  # the same system message
        assert engine_body[-1] == base_body[-1]  # the same newest turn
        short, long = sorted((engine_body[1:], base_body[1:]), key=len)
        assert long[len(long) - len(short) :] == short  # one window is a suffix of the other
    engine = prefix_stats([(r.session, r.messages) for r in talk.recorded])
    baseline = prefix_stats(base)
    assert engine.share > baseline.share
    assert baseline.total_tokens >= engine.total_tokens


async def test_prompt_cache_result(tmp_path: Path) -> None:
    result = await prompt_cache.run(CacheSize(120, input_limit=600), workdir=tmp_path)
    _sane(result)
    d = result.details
    assert 0 < d["requests"] < 120
    assert 0 <= d["engine_share"] <= 1 and 0 <= d["baseline_share"] <= 1
    assert d["engine_shared_tokens"] <= d["engine_total_tokens"]
    share = result.figures[0]
    assert share.unit == "%" and share.value == pytest.approx(d["engine_share"] * 100)


async def test_memory_result(tmp_path: Path) -> None:
    result = await memory.run(40, 2, workdir=tmp_path)
    _sane(result)
    d = result.details
    assert d["channels"] == 40 and d["messages"] == 80 and d["stopped_early"] == 0
    assert d["actors_in_ram"] == 40 + memory.warmup_channels(40)
    assert d["rss_before_mb"] > 1 and d["floor_rss_before_mb"] > 1
    assert result.figures[0].value * 1024 == pytest.approx(d["bytes_per_channel"])


async def test_startup_result_and_lazy_imports(tmp_path: Path) -> None:
    result = await startup.run(1, references=False, warm=False, workdir=tmp_path)
    _sane(result)
    assert result.details["console exit code"] == 0
    assert result.details["modules loaded by --help"] > 10
    assert all(f.met is True for f in result.figures), result.notes
    assert any(note.startswith("--help imports") for note in result.notes)


async def test_memory_store_keeps_store_semantics() -> None:
    store = MemoryStore()
    channel = Channel("t", "c")
    author = Participant("u", "U")
    first = await store.add_message(Message(channel, "1", author, "hi", 1.0))
    again = await store.add_message(Message(channel, "1", author, "hi", 1.0, frozenset({"k"})))
    assert first.new and not again.new and again.newly_addressed == {"k"}
    await store.add_message(Message(channel, "2", author, "yo", 2.0))
    await store.delete_message(channel, "2")
    assert [r.msg_id for r in await store.recent(channel)] == ["1"]
    assert (await store.last_message(channel)) == again.record
    await store.put_state(channel, "k", {"a": [1]})
    state = await store.get_state(channel, "k")
    state["a"].append(2)
    assert await store.get_state(channel, "k") == {"a": [1]}
    await store.add_usage(channel, "k", "d", prompt_tokens=3, completion_tokens=2, cached_tokens=1)
    assert (await store.usage(character="k")).prompt_tokens == 3
    assert await store.active_channels("t", 0.0) == [("c", "2")]


async def test_diagnosis_counts_store_calls(tmp_path: Path) -> None:
    text = await diagnose(pipeline.PipelineSize(4, 4, concurrency=2), workdir=tmp_path)
    assert "add_message: 1." in text
    assert "dict store" in text and "top functions by own time" in text


def test_report_table_lists_every_figure() -> None:
    result = BenchResult(
        "x",
        (
            Figure("x", "speed", 1234.5, "msg/s", "floor", 100.0, ">= 5", True),
            Figure("x", "size", 2.0, "KB", "base", 4.0),
        ),
    )
    text = table([result])
    assert "1,234 msg/s" in text and "12.3x" in text and "yes" in text and "0.5x" in text
    assert markdown([result]).count("\n") == 3
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile([], 99) == 0.0


def test_benchmark_names_and_sizes() -> None:
    assert _names(None) == ["pipeline", "prompt_cache", "memory", "startup"]
    assert _names(["cache,mem", "pipeline"]) == ["prompt_cache", "memory", "pipeline"]
    with pytest.raises(SystemExit):
        _names(["nope"])
    full = SIZES["full"]
    assert full.pipeline.messages == 100_000 and full.pipeline.channels == 1_000
    assert full.cache.messages == 2_000 and full.memory_channels == 10_000


def test_command_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main(["--size", "tiny", "--only", "cache", "--json", str(out), "--markdown"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "== prompt_cache" in printed and "shared-prefix share" in printed
    assert "| prompt_cache |" in printed
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["meta"]["size"] == "tiny"
    assert [r["name"] for r in data["results"]] == ["prompt_cache"]
    assert data["results"][0]["figures"][0]["target"] == ">= 85%"
