"""The collector-friendly append-only sequence, against a plain list."""

from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from core.chunked import SEAL, Chunked


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 3 * SEAL + 5),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 2 * SEAL + 3)), max_size=12),
)
def test_chunked_items_behave_like_a_list(start: int, steps: list[tuple[bool, int]]) -> None:
    """Appends and drops from the front, through partial first chunks and seals, against a list."""
    model = list(range(1, start + 1))
    held = Chunked(model)
    next_item = start + 1
    for grow, n in steps:
        if grow:
            for _ in range(n):
                held.append(next_item)
                model.append(next_item)
                next_item += 1
        else:
            assert held.drop_front(n) == model[:n]
            del model[:n]
        assert len(held) == len(model)
        assert [held[i] for i in range(len(model))] == model
        assert len(model) == 0 or held[-1] == model[-1]
        assert held.newest() == (model[-1] if model else None)
        for i in range(0, len(model) + 1, 7):
            assert held.since(i) == model[i:]


def test_sealed_chunks_of_untracked_items_leave_the_collector_alone() -> None:
    held: Chunked[tuple[str, int]] = Chunked()
    for i in range(5 * SEAL + 3):
        held.append((f"turn {i}", i))
    for _ in range(3):  # each pass untracks one more level: item, chunk, chunks
        gc.collect()
    assert not gc.is_tracked(held.chunks)
    assert not any(gc.is_tracked(chunk) for chunk in held.chunks)
    assert len(held.tail) == 3 and held.since(0)[-1] == (f"turn {5 * SEAL + 2}", 5 * SEAL + 2)
