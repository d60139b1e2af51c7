"""Which engine variants let other Python threads run while they compute: one engine, one thread and two.

    python -m benchmarks.engine_gil                          # the serving benchmark's smoke checkpoint
    python -m benchmarks.engine_gil --checkpoint runs/demo/best --seconds 3

Why it matters: a replica's event loop (HTTP, parsing, answers) and its inference thread share one GIL. A
variant whose kernels run with the GIL released lets the loop work during a batch; one that keeps it blocks
the loop for the batch's whole run. Per CPU variant that loads, at batch 1 and 16 (windows of synthetic
bars, every segment run): the time of one `InferenceEngine.run` alone, then the runs per second of the same
engine called back to back from one thread and from two. Two threads over one is near 2 where the GIL is
released for most of a run (on >= 2 free cores) and at or below 1 where it is kept. The one- and two-thread
measurements alternate over --rounds rounds, and the ratio is the median of the rounds' ratios. Writes
benchmarks/results/engine_gil.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.serve_latency import RESULTS, prepare_checkpoint

BATCH_SIZES = (1, 16)


def runs_per_second(run, threads: int, seconds: float) -> float:
    """Calls of `run` per second, summed over `threads` threads calling it back to back for `seconds`."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(index: int) -> None:
        with torch.inference_mode():
            while time.perf_counter() < deadline:
                run()
                counts[index] += 1

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def measure(engine, batch_size: int, seconds: float, rounds: int) -> dict[str, Any]:
    from hrm_platform.data.features import windows_from_bars
    from hrm_platform.serving.engine import synthetic_bars

    bars = np.stack([synthetic_bars(engine.bars_needed, seed=seed) for seed in range(batch_size)])
    windows = torch.as_tensor(windows_from_bars(bars, engine.feature_spec))  # (B, W, F)
    budgets = torch.full((batch_size,), engine.max_segments)

    def run() -> None:
        engine.run(windows, budgets, use_halting=False)  # every segment: the same work in every call

    runs_per_second(run, 1, min(seconds, 0.5))  # warm-up
    one, two = [], []
    for _ in range(rounds):
        one.append(runs_per_second(run, 1, seconds))
        two.append(runs_per_second(run, 2, seconds))
    return {
        "batch_size": batch_size,
        "run_ms": 1e3 / statistics.median(one),
        "one_thread_runs_per_s": statistics.median(one),
        "two_threads_runs_per_s": statistics.median(two),
        "two_over_one": statistics.median(b / a for a, b in zip(one, two)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the serving benchmark's smoke one")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be > 0 and --rounds >= 1")

    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.variants import variants_for_device

    checkpoint = prepare_checkpoint(args.checkpoint)
    torch.set_num_threads(1)  # as a replica runs its engine (torch_threads=1)
    rows = []
    print("| variant | batch | one run, ms | runs/s, 1 thread | runs/s, 2 threads | 2 threads / 1 |")
    print("|---|---|---|---|---|---|")
    for variant in variants_for_device("cpu"):
        try:
            engine = InferenceEngine.from_checkpoint(checkpoint, variant=variant, torch_threads=1)
        except Exception as error:  # noqa: BLE001 - a variant this machine cannot load is reported, not fatal
            rows.append({"variant": variant, "error": str(error)})
            print(f"| {variant} | - | - | - | - | not loadable: ...{str(error)[-60:]} |")
            continue
        for batch_size in BATCH_SIZES:
            row = {"variant": variant, **measure(engine, batch_size, args.seconds, args.rounds)}
            rows.append(row)
            print(f"| {variant} | {batch_size} | {row['run_ms']:.2f} | {row['one_thread_runs_per_s']:,.0f} | "
                  f"{row['two_threads_runs_per_s']:,.0f} | {row['two_over_one']:.2f}x |", flush=True)
    out = RESULTS.parent / "engine_gil.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(checkpoint), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
