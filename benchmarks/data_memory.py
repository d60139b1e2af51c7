"""Peak memory of a large dataset: build 1,000,000 synthetic bars x window 64 and read random windows.

The windows are sliced lazily from one (T, F) float32 array per instrument, so memory grows with bars, not
with bars x window. Measure the peak with a public tool:

    /usr/bin/time -v .venv/bin/python -m benchmarks.data_memory            # see "Maximum resident set size"
    .venv/bin/python -m benchmarks.data_memory --instruments 4 --bars 250000 --reads 50000

Prints a table and writes benchmarks/results/data_memory.json (with the process's own ru_maxrss too).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from hrm_platform.config import DataConfig
from hrm_platform.data.dataset import build_datasets

RESULTS = Path(__file__).resolve().parent / "results" / "data_memory.json"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(instruments: int, bars: int, window: int, reads: int, batch: int, seed: int) -> dict[str, float]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    bundle = build_datasets(DataConfig(n_instruments=instruments, n_bars=bars, window=window, seed=seed))
    build_s = time.perf_counter() - started
    rss_after_build = _peak_rss_mib()
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    checksum = 0.0
    for position in rng.integers(0, len(bundle.train), reads):  # one window at a time, as a DataLoader does
        checksum += float(bundle.train[position][0][-1, 0])
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(max(1, reads // batch)):
        windows, _, _ = bundle.test.batch(rng.integers(0, len(bundle.test), batch))  # (batch, W, F)
        checksum += float(windows[:, -1, 0].sum())
    batch_s = time.perf_counter() - started
    return {
        "instruments": instruments,
        "bars_total": instruments * bars,
        "window": window,
        "windows_total": len(bundle.train) + len(bundle.val) + len(bundle.test),
        "build_s": round(build_s, 3),
        "random_reads": reads,
        "single_reads_per_s": round(reads / single_s),
        "batch": batch,
        "batched_windows_per_s": round(max(1, reads // batch) * batch / batch_s),
        "peak_rss_after_build_mib": round(rss_after_build, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "checksum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instruments", type=int, default=1)
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars per instrument")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--reads", type=int, default=20_000, help="random single-window reads")
    parser.add_argument("--batch", type=int, default=256, help="windows per batched read")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = run(args.instruments, args.bars, args.window, args.reads, args.batch, args.seed)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
