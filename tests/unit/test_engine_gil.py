"""benchmarks/engine_gil.py's thread measurement tells a call that releases the GIL from one that keeps it."""

from __future__ import annotations

import time

from benchmarks.engine_gil import runs_per_second


def _keeps_the_gil() -> None:
    total = 0
    for step in range(20_000):  # a fixed amount of pure Python: the GIL is held throughout
        total += step


def _releases_the_gil() -> None:
    time.sleep(0.002)  # the GIL is released while the thread waits, as in a kernel that releases it


def test_two_threads_double_a_call_that_releases_the_gil_and_not_one_that_keeps_it():
    released = runs_per_second(_releases_the_gil, 2, 0.4) / runs_per_second(_releases_the_gil, 1, 0.4)
    kept = runs_per_second(_keeps_the_gil, 2, 0.4) / runs_per_second(_keeps_the_gil, 1, 0.4)
    assert released > 1.6, released
    assert kept < 1.3, kept
