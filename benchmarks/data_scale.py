"""Training on more data than a worker should hold: data.loader memory vs ray_data at 1x, 4x and 16x a base
market, side by side, with 2 Ray Train workers each way and a fixed number of steps.

    .venv/bin/python -m benchmarks.data_scale                       # 16 instruments x 15,625 / 62,500 / 250,000 bars
    .venv/bin/python -m benchmarks.data_scale --scales 1 4 --steps 40

Each scale's synthetic market is written once as partitioned Parquet (`hrm data --to-parquet`'s writer), then
each loader trains on it in a fresh `hrm train --json` process (its own local Ray cluster): the smoke preset's
model, batch 256 per worker, one epoch of `--steps` steps per worker, a 2 % validation split (so that validation
stays short at 16x). Per run: the training samples/s of the epoch (the slowest rank's time: for ray_data the wait
for the first blocks is in it), and each worker's memory: `private_memory_peak_mb`, the most resident memory any
rank held as its own, sampled after every step (RSS minus shared pages: a Ray Data consumer maps the object
store's pages, which RSS would count in every worker although the node's object store holds them once). The
process's lifetime RSS peak (ru_maxrss) is in the JSON too. Loaders alternate within each scale. Prints a
markdown table and writes benchmarks/results/data_scale.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hrm_platform.config import load_config
from hrm_platform.data.dataset import load_bars
from hrm_platform.data.parquet import write_parquet_market

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_scale.json"
PRESET = ROOT / "jobs" / "configs" / "smoke.yaml"
LOADERS = ("memory", "ray_data")


def write_market(out: Path, instruments: int, bars: int) -> str:
    """The synthetic market of this size as partitioned Parquet under `out`; returns its folder."""
    config = load_config(PRESET, [f"data.n_instruments={instruments}", f"data.n_bars={bars}"])
    frames, _ = load_bars(config.data)
    folder = out / f"market-{instruments}x{bars}"
    write_parquet_market(frames, str(folder), rows_per_file=100_000)
    return str(folder)


def train_once(market: str, loader: str, steps: int, batch: int, workers: int, storage: Path) -> dict[str, float]:
    """One `hrm train --json` run in its own process; its epoch's speed and memory figures."""
    name = f"{Path(market).name}-{loader}"
    command = [
        sys.executable, "-m", "hrm_platform.cli", "train", "--json", "--config", str(PRESET),
        "data.source=file", f"data.path={market}", f"data.loader={loader}", "data.window=64",
        "data.val_fraction=0.02", f"train.num_workers={workers}", "train.epochs=1",
        f"train.max_train_batches={steps}", f"train.batch_size={batch}", f"train.storage_path={storage}",
        f"train.name={name}",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{loader} on {market} failed:\n{result.stderr[-3000:]}")
    epoch = json.loads(result.stdout)["final_metrics"]
    return {
        "samples_per_s": round(epoch["samples_per_s"], 1),
        "private_memory_peak_mb": round(epoch["private_memory_peak_mb"], 1),
        "peak_memory_mb": round(epoch["peak_memory_mb"], 1),
        "epoch_time_s": round(epoch["epoch_time_s"], 2),
        "wall_s": round(wall_s, 1),
    }


def run(scales: list[int], instruments: int, base_bars: int, steps: int, batch: int, workers: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hrm-data-scale-") as scratch:
        scratch_path = Path(scratch)
        for position, scale in enumerate(scales):
            bars = base_bars * scale
            market = write_market(scratch_path, instruments, bars)
            order = LOADERS if position % 2 == 0 else LOADERS[::-1]  # alternate which loader goes first
            for loader in order:
                figures = train_once(market, loader, steps, batch, workers, scratch_path / "runs")
                row = {"scale": scale, "instruments": instruments, "bars_per_instrument": bars, "loader": loader,
                       **figures}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per scale, both loaders side by side, and ray_data's speed as a ratio of memory's."""
    lines = [
        "| scale | instruments x bars | memory: MB per worker | ray_data: MB per worker | memory samples/s "
        "| ray_data samples/s | ray_data / memory speed |",
        "|---|---|---|---|---|---|---|",
    ]
    for scale in sorted({row["scale"] for row in rows}):
        by_loader = {row["loader"]: row for row in rows if row["scale"] == scale}
        memory, streamed = by_loader["memory"], by_loader["ray_data"]
        lines.append(
            f"| {scale}x | {memory['instruments']} x {memory['bars_per_instrument']:,} "
            f"| {memory['private_memory_peak_mb']:,.0f} | {streamed['private_memory_peak_mb']:,.0f} "
            f"| {memory['samples_per_s']:,.0f} | {streamed['samples_per_s']:,.0f} "
            f"| {streamed['samples_per_s'] / memory['samples_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def growth(rows: list[dict], loader: str) -> float:
    """Private memory per worker at the largest scale over that at the smallest, for one loader."""
    mine = sorted((row for row in rows if row["loader"] == loader), key=lambda row: row["scale"])
    return mine[-1]["private_memory_peak_mb"] / mine[0]["private_memory_peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--instruments", type=int, default=16)
    parser.add_argument("--base-bars", type=int, default=15_625, help="bars per instrument at 1x")
    parser.add_argument("--steps", type=int, default=150, help="training steps per worker")
    parser.add_argument("--batch", type=int, default=256, help="windows per step per worker")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = run(args.scales, args.instruments, args.base_bars, args.steps, args.batch, args.workers)
    print(table(rows))
    summary = {loader: round(growth(rows, loader), 2) for loader in LOADERS}
    print(f"memory per worker, growth from {min(args.scales)}x to {max(args.scales)}x: " +
          ", ".join(f"{loader} {value:.2f}x" for loader, value in summary.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"args": vars(args), "runs": rows, "private_memory_growth": summary}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
