"""The in-memory message cache: what it answers, what it keeps current, what it forgets."""

from __future__ import annotations

import gc

from core.chunked import SEAL
from core.lines import SEQ, Line, line, make_line
from core.rows import RowCache, weight
from core.store import StoredMessage

KEY = "console:room"


def rows(*seqs: int) -> list[Line]:
    return [make_line(seq, "u1", text=f"text {seq}") for seq in seqs]


def seqs(lines: list[Line] | None) -> list[int] | None:
    return None if lines is None else [x[SEQ] for x in lines]


def filled(seq_list: list[int], *, after: int = 0, budget: int = 10**9) -> RowCache:
    cache = RowCache(budget=budget, per_channel=100)
    token = cache.begin_load(KEY)
    cache.end_load(KEY, token, after, 1000, rows(*seq_list))
    return cache


def test_nothing_is_known_before_a_load() -> None:
    cache = RowCache(budget=10**6, per_channel=10)
    assert cache.lookup(KEY, 0, 40) is None
    cache.add(KEY, rows(1)[0])  # no entry: nothing to keep current
    assert cache.lookup(KEY, 0, 40) is None


def test_a_complete_load_answers_any_window_inside_it() -> None:
    cache = filled([3, 5, 8, 9])
    assert seqs(cache.lookup(KEY, 0, 40)) == [3, 5, 8, 9]
    assert seqs(cache.lookup(KEY, 0, 2)) == [8, 9]
    assert seqs(cache.lookup(KEY, 5, 40)) == [8, 9]
    assert seqs(cache.lookup(KEY, 9, 40)) == []


def test_a_truncated_load_answers_only_what_it_covers() -> None:
    cache = RowCache(budget=10**9, per_channel=100)
    token = cache.begin_load(KEY)
    got = cache.end_load(KEY, token, 0, 3, rows(7, 8, 9))  # the newest 3 of more
    assert seqs(got) == [7, 8, 9]
    assert seqs(cache.lookup(KEY, 0, 3)) == [7, 8, 9]
    assert seqs(cache.lookup(KEY, 6, 40)) == [7, 8, 9]
    assert cache.lookup(KEY, 0, 4) is None, "a fourth row may exist below seq 7"
    assert cache.lookup(KEY, 2, 40) is None


def test_stored_messages_are_appended_and_redeliveries_replace() -> None:
    cache = filled([1, 2])
    cache.add(KEY, make_line(3, "u2", text="new"))
    cache.add(KEY, make_line(2, "u1", text="text 2", addressed=frozenset({"lu"})))
    got = cache.lookup(KEY, 0, 40)
    assert seqs(got) == [1, 2, 3]
    assert got is not None and got[1][7] == ("lu",)


def test_a_message_stored_while_loading_is_not_lost() -> None:
    """A store read and a store write can cross; the write must not vanish from memory."""
    cache = RowCache(budget=10**9, per_channel=100)
    token = cache.begin_load(KEY)
    cache.add(KEY, make_line(5, "u1", text="stored meanwhile"))
    got = cache.end_load(KEY, token, 0, 40, rows(1, 2))  # the read did not see seq 5
    assert seqs(got) == [1, 2, 5]
    assert seqs(cache.lookup(KEY, 0, 40)) == [1, 2, 5]


def test_an_edit_during_a_load_keeps_the_stale_read_out_of_memory() -> None:
    cache = RowCache(budget=10**9, per_channel=100)
    token = cache.begin_load(KEY)
    cache.invalidate(KEY)
    got = cache.end_load(KEY, token, 0, 40, rows(1, 2))
    assert seqs(got) == [1, 2], "the caller still gets its rows"
    assert cache.lookup(KEY, 0, 40) is None, "but they are not kept"


def test_a_failed_load_changes_nothing() -> None:
    cache = RowCache(budget=10**9, per_channel=100)
    cache.begin_load(KEY)
    cache.cancel_load(KEY)
    assert cache.lookup(KEY, 0, 40) is None
    assert len(cache) == 0


def test_invalidate_forgets_the_channel() -> None:
    cache = filled([1, 2])
    cache.invalidate(KEY)
    assert cache.lookup(KEY, 0, 40) is None
    assert cache.weight == 0


def test_each_channel_keeps_at_most_its_share() -> None:
    cache = RowCache(budget=10**9, per_channel=3)
    token = cache.begin_load(KEY)
    cache.end_load(KEY, token, 0, 40, rows(1, 2))
    for seq in (3, 4, 5):
        cache.add(KEY, make_line(seq, "u1", text=f"text {seq}"))
    assert seqs(cache.lookup(KEY, 0, 3)) == [3, 4, 5]
    assert cache.lookup(KEY, 0, 4) is None
    assert cache.weight == sum(weight(x) for x in rows(3, 4, 5))


def test_the_least_recently_used_channels_go_first_when_over_budget() -> None:
    one = weight(rows(1)[0])
    cache = RowCache(budget=5 * one, per_channel=100)
    for name, base in (("a", 0), ("b", 10), ("c", 20)):
        token = cache.begin_load(name)
        cache.end_load(name, token, 0, 40, rows(base + 1, base + 2))
    assert cache.lookup("a", 0, 40) is None, "a was the least recently used"
    assert seqs(cache.lookup("b", 0, 40)) == [11, 12]
    cache.add("c", make_line(23, "u1", text="text 23"))  # c grows; b is now the oldest
    assert cache.lookup("b", 0, 40) is None
    assert seqs(cache.lookup("c", 0, 40)) == [21, 22, 23]
    assert cache.weight <= 5 * one


def test_cached_lines_are_left_alone_by_the_garbage_collector() -> None:
    record = StoredMessage(
        seq=1, platform="console", channel_id="room", msg_id="m1", author_id="u1",
        author_name="Ann", author_is_bot=False, character=None, text="hi", at=0.0,
        reply_to=None, addressed=frozenset({"lu"}), deleted=False,
    )  # fmt: skip
    cache = RowCache(budget=10**9, per_channel=100)
    token = cache.begin_load(KEY)
    cache.end_load(KEY, token, 0, 40, [line(record)])
    gc.collect()
    gc.collect()  # the first pass untracks the inner tuple of addressees, the second the line
    cached = cache.lookup(KEY, 0, 40)
    assert cached is not None and not gc.is_tracked(cached[0])


def test_long_runs_cross_seals_and_keep_every_window_right() -> None:
    cache = RowCache(budget=10**9, per_channel=100)
    token = cache.begin_load(KEY)
    cache.end_load(KEY, token, 0, 40, rows(1, 2, 3))
    for seq in range(4, 301):
        cache.add(KEY, make_line(seq, "u1", text=f"text {seq}"))
    assert seqs(cache.lookup(KEY, 0, 100)) == list(range(201, 301))
    assert cache.lookup(KEY, 0, 101) is None, "only the newest 100 are kept"
    assert seqs(cache.lookup(KEY, 250, 100)) == list(range(251, 301))
    assert seqs(cache.lookup(KEY, 0, 7)) == list(range(294, 301))
    assert cache.weight == sum(weight(x) for x in rows(*range(201, 301)))
    # a redelivery that adds addressees, deep in the sealed part and in the open tail
    cache.add(KEY, make_line(210, "u1", text="text 210", addressed=frozenset({"lu"})))
    cache.add(KEY, make_line(300, "u1", text="text 300", addressed=frozenset({"lu"})))
    got = cache.lookup(KEY, 0, 100)
    assert got is not None and seqs(got) == list(range(201, 301))
    assert got[9][7] == ("lu",) and got[-1][7] == ("lu",)


def test_sealed_lines_leave_the_collector_little_to_visit() -> None:
    """All but the open tail sit in untracked tuples: a full collection skips them."""
    cache = RowCache(budget=10**9, per_channel=1000)
    token = cache.begin_load(KEY)
    cache.end_load(KEY, token, 0, 40, [])
    for seq in range(1, 501):
        cache.add(KEY, make_line(seq, "u1", text=f"text {seq}"))
    for _ in range(4):  # each pass untracks one more level: addressed, line, chunk, chunks
        gc.collect()
    held = cache._entries[KEY].rows
    assert held is not None and len(held.tail) < SEAL <= held.sealed
    assert all(len(chunk) == SEAL for chunk in held.chunks[1:])
    assert not gc.is_tracked(held.chunks)
    assert not any(gc.is_tracked(chunk) for chunk in held.chunks)
    assert seqs(cache.lookup(KEY, 0, 1000)) == list(range(1, 501))
