"""The flood gate books send times that respect Telegram's per-chat, per-group and global limits."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.telegram_flood import FloodGate, FloodLimits


def test_first_message_goes_now_then_one_per_second_per_chat():
    gate = FloodGate()
    assert gate.book("a", group=True, now=100.0) == 100.0
    assert gate.book("a", group=True, now=100.2) == 101.0
    assert gate.book("a", group=True, now=100.3) == 102.0
    assert gate.book("b", group=True, now=100.3) == 100.3


def test_a_quiet_chat_sends_immediately_again():
    gate = FloodGate()
    gate.book("a", group=False, now=100.0)
    assert gate.book("a", group=False, now=105.0) == 105.0


def test_twenty_per_minute_in_a_group_but_not_in_a_private_chat():
    gate = FloodGate()
    times = [gate.book("g", group=True, now=0.0) for _ in range(21)]
    assert times[:20] == [float(i) for i in range(20)]
    assert times[20] == 60.0
    private = FloodGate()
    ptimes = [private.book("p", group=False, now=0.0) for _ in range(21)]
    assert ptimes[20] == 20.0


def test_thirty_per_second_overall():
    gate = FloodGate()
    times = [gate.book(str(i), group=True, now=0.0) for i in range(31)]
    assert times[:30] == [0.0] * 30
    assert times[30] == 1.0


def test_a_booking_counts_against_windows_that_end_later():
    gate = FloodGate(FloodLimits(overall_per_second=3))
    assert [gate.book("a", group=False, now=9.0) for _ in range(2)] == [9.0, 10.0]
    assert gate.book("b", group=False, now=9.5) == 9.5
    assert gate.book("c", group=False, now=9.5) == 9.5
    assert gate.book("d", group=False, now=9.6) == 10.5


def test_float_sums_at_the_window_edge_still_find_a_slot():
    gate = FloodGate(FloodLimits(overall_per_second=3))
    now = 0.14914260006737792
    assert gate.book("a", group=True, now=now) == now
    gate.book("b", group=True, now=now)
    gate.book("c", group=True, now=now)
    assert gate.book("a", group=True, now=now) == now + 1.0


def test_old_bookings_are_forgotten():
    gate = FloodGate()
    for i in range(25):
        gate.book(str(i), group=True, now=0.0)
    assert gate.book("x", group=True, now=1000.0) == 1000.0
    assert gate._all == [1000.0] and list(gate._chats) == ["x"]


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.floats(min_value=0, max_value=2)),
        min_size=1,
        max_size=60,
    )
)
def test_bookings_never_break_the_limits(requests):
    limits = FloodLimits(per_chat_interval_s=1.0, group_per_minute=5, overall_per_second=3)
    gate = FloodGate(limits)
    now = 0.0
    booked: dict[str, list[float]] = {}
    every: list[float] = []
    for chat, step in requests:
        now += step
        at = gate.book(chat, group=True, now=now)
        assert at >= now
        booked.setdefault(chat, []).append(at)
        every.append(at)
    for times in booked.values():
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
        for t in times:
            assert sum(1 for u in times if t <= u < t + 60.0) <= 5
    for t in every:
        assert sum(1 for u in every if t - 1.0 + 1e-6 < u <= t) <= 3
