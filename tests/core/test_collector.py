"""The collector settings of a long-running salon process."""

from __future__ import annotations

import gc

from bench.pipeline import frozen_workload
from core.collector import OLD_GENERATION_THRESHOLD, tune_collector


def test_full_collections_are_made_rarer_and_can_be_restored() -> None:
    before = gc.get_threshold()
    try:
        assert tune_collector() == before
        assert gc.get_threshold() == (before[0], before[1], OLD_GENERATION_THRESHOLD)
    finally:
        gc.set_threshold(*before)


def test_the_benchmark_runs_with_the_settings_of_salon_run_and_puts_them_back() -> None:
    before = gc.get_threshold()
    with frozen_workload():
        assert gc.get_threshold()[2] == OLD_GENERATION_THRESHOLD
    assert gc.get_threshold() == before
