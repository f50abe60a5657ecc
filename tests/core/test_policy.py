"""The speaking policy: hard rules, chance, continuation, several characters, reasons."""

from __future__ import annotations

import random

from core.lines import Line, make_line
from core.policy import Candidate, Knobs, decide, names_in

NOW = 1000.0


def human(
    seq: int, text: str = "hi", addressed: frozenset[str] = frozenset(), who: str = "h1"
) -> Line:
    return make_line(seq, who, None, False, text, addressed)


def own(seq: int, key: str = "lu") -> Line:
    return make_line(seq, f"salon:{key}", key, True, "...")


def cand(key: str = "lu", t: float = 0.2, **kw: object) -> Candidate:
    knobs = Knobs(talkativeness=t)
    return Candidate(key=key, names=(key.title(),), knobs=knobs, **kw)  # type: ignore[arg-type]


def run(
    recent: list[Line],
    cands: list[Candidate],
    seed: int = 1,
    direct: bool = False,
    now: float = NOW,
):
    return decide(recent, cands, direct=direct, now=now, rng=random.Random(seed))


def test_addressed_always_speaks_even_when_quiet() -> None:
    d = run([human(1, "@lu hi", frozenset({"lu"}))], [cand(t=0.0)])
    assert d.speaker == "lu" and d.mode == "reply" and "addressed" in d.reason


def test_direct_chat_always_answers() -> None:
    d = run([human(1)], [cand(t=0.0)], direct=True)
    assert d.speaker == "lu" and "direct" in d.reason


def test_quiet_character_stays_silent_with_a_reason() -> None:
    d = run([human(1, "nice weather")], [cand(t=0.0)])
    assert d.speaker is None and "lu" in d.handled
    assert "roll" in d.why["lu"]


def test_talkativeness_one_answers_everything() -> None:
    for seed in range(20):
        assert run([human(1, "x")], [cand(t=1.0)], seed=seed).speaker == "lu"


def test_chatter_rate_follows_talkativeness() -> None:
    spoke = sum(run([human(1, "x")], [cand(t=0.3)], seed=s).speaker == "lu" for s in range(400))
    assert 80 < spoke < 160


def test_name_as_a_word_is_likely() -> None:
    spoke = sum(
        run([human(1, "what does lu think?")], [cand(t=0.0)], seed=s).speaker == "lu"
        for s in range(200)
    )
    assert spoke > 150
    assert names_in("凌露你好", ["凌露"]) and not names_in("lunch time", ["Lu"])


def test_muted_and_limited_never_speak_even_when_addressed() -> None:
    d = run([human(1, "@lu", frozenset({"lu"}))], [cand(blocked="muted in this channel")])
    assert d.speaker is None and "muted" in d.why["lu"]


def test_bot_loop_guard() -> None:
    bots = [make_line(i, f"b{i % 2}", None, True, "hey lu", frozenset({"lu"})) for i in range(1, 4)]
    d = run(bots, [cand(t=1.0)])
    assert d.speaker is None and "loop" in d.why["lu"]
    assert run([*bots, human(4)], [cand(t=1.0)]).speaker == "lu"


def test_continuation_waits_then_speaks_with_backoff() -> None:
    recent = [human(1), own(2)]
    c = cand(t=0.2, handled_seq=2, last_spoke_at=NOW)
    early = run(recent, [c], now=NOW + 10)
    assert early.speaker is None and early.wake_at == NOW + 90
    due = run(recent, [c], now=NOW + 90)
    assert due.speaker == "lu" and due.mode == "continue"
    second = cand(t=0.2, handled_seq=2, last_spoke_at=NOW, continuations=1)
    assert run(recent, [second], now=NOW + 100).wake_at == NOW + 180
    done = cand(t=0.2, handled_seq=2, last_spoke_at=NOW, continuations=2)
    assert run(recent, [done], now=NOW + 10_000).speaker is None


def test_no_continuation_once_someone_answered() -> None:
    recent = [own(1), human(2)]
    c = cand(t=0.0, handled_seq=2, last_spoke_at=NOW)
    d = run(recent, [c], now=NOW + 1000)
    assert d.speaker is None and d.wake_at is None


def test_several_characters_take_turns_addressed_first() -> None:
    msg = human(1, "@lu hello everyone", frozenset({"lu"}))
    d = run([msg], [cand("lu", t=0.0), cand("yi", t=1.0)])
    assert d.speaker == "lu"
    assert "yi" in d.handled and "lu speaks first" in d.why["yi"]


def test_both_addressed_one_waits_for_the_next_decision() -> None:
    msg = human(1, "@lu @yi hi", frozenset({"lu", "yi"}))
    d = run([msg], [cand("lu"), cand("yi")])
    assert d.speaker == "lu" and "yi" not in d.handled
    d2 = run([msg, own(2, "lu")], [cand("lu", handled_seq=1), cand("yi")])
    assert d2.speaker == "yi"


def test_same_inputs_same_decision() -> None:
    recent = [human(1, "x"), human(2, "y")]
    a = run(recent, [cand("lu", t=0.5), cand("yi", t=0.5)], seed=7)
    b = run(recent, [cand("lu", t=0.5), cand("yi", t=0.5)], seed=7)
    assert a == b
