"""Benchmarks for issue 5: pipeline throughput, prompt-cache prefix, memory, start-up.

Run them with `python -m bench` (see `python -m bench --help`); each benchmark prints its
figures next to a baseline measured in the same run, so the ratios hold across machines.
"""
