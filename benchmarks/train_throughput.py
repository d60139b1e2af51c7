"""Training throughput side by side: a plain single-process PyTorch loop vs Ray Train with 1 and 2 workers.

    .venv/bin/python -m benchmarks.train_throughput                                   # the demo preset
    .venv/bin/python -m benchmarks.train_throughput --config jobs/configs/smoke.yaml  # quick check

All three train the same data for the same epochs with the same epoch loop (`training/fit.py`), validate and write a
checkpoint every epoch. The plain loop is `train_local`; the
Ray variants are `run_training` on one local cluster started before any clock starts (cluster start is
excluded; worker start-up inside `fit()` is included). Per variant: wall time, samples/s over the wall
time, samples/s inside the epochs (the loop's own measure, no start-up), and time from the call to the
first finished batch. The machine is shared and noisy: `--repeats N` runs N rounds of the three variants
back to back; each ratio compares a variant with the plain loop of the same round (the same load), and
the verdict uses the median of those ratios. Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as python_platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch

from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import PlatformConfig, load_config
from hrm_platform.local_ray import init_local_ray
from hrm_platform.training.local import train_local
from hrm_platform.training.trainer import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "train_throughput.json"
TARGET_RATIO = 1.3  # Ray Train with 1 worker within 1.3x of the plain loop's wall time


@dataclass
class VariantResult:
    variant: str
    workers: int
    wall_s: float
    samples: int
    samples_per_s_wall: float
    samples_per_s_in_epochs: float  # mean of the per-epoch figures the loop measured
    first_step_s: float  # from the call to the first finished batch
    final_val_accuracy: float | None
    ratio_to_plain: float | None = None


def _summarise(variant: str, workers: int, started_unix: float, wall_s: float, history: list[dict]) -> VariantResult:
    samples = sum(entry["samples"] for entry in history)
    return VariantResult(
        variant=variant,
        workers=workers,
        wall_s=wall_s,
        samples=samples,
        samples_per_s_wall=samples / wall_s,
        samples_per_s_in_epochs=sum(entry["samples_per_s"] for entry in history) / len(history),
        first_step_s=history[0]["first_step_unix"] - started_unix,
        final_val_accuracy=history[-1].get("val_accuracy"),
    )


def run_plain(config: PlatformConfig, storage: Path) -> VariantResult:
    started_unix, started = time.time(), time.perf_counter()
    train_local(config, storage / "plain")
    wall_s = time.perf_counter() - started
    latest = sorted((storage / "plain").glob("epoch_*"))[-1]
    return _summarise(
        "plain PyTorch (train_local)", 1, started_unix, wall_s, load_manifest(latest)["metrics"]["history"]
    )


def run_ray(config: PlatformConfig, storage: Path, workers: int) -> VariantResult:
    config = config.model_copy(deep=True)
    config.train.num_workers = workers
    config.train.storage_path = str(storage)
    config.train.name = f"ray-{workers}"
    started_unix, started = time.time(), time.perf_counter()
    summary = run_training(config, quiet=True)
    wall_s = time.perf_counter() - started
    return _summarise(
        f"Ray Train, {workers} worker{'s' if workers > 1 else ''}", workers, started_unix, wall_s, summary.history
    )


def run_round(config: PlatformConfig, storage: Path, round_number: int) -> list[VariantResult]:
    round_dir = storage / f"round-{round_number}"
    results = [run_plain(config, round_dir), run_ray(config, round_dir, 1), run_ray(config, round_dir, 2)]
    for result in results:
        result.ratio_to_plain = result.wall_s / results[0].wall_s
    return results


def render(rounds: list[list[VariantResult]], config_path: str, epochs: int) -> str:
    """One row per variant and round; a ratio compares a variant with the plain loop of the same round."""
    lines = [
        f"train throughput: {config_path}, {epochs} epochs, 1 torch thread per process, {len(rounds)} round(s)",
        "",
        "| round | variant | wall (s) | wall vs plain | samples/s (wall) | samples/s (in epochs) | "
        "first step (s) | final val acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, one_round in enumerate(rounds, start=1):
        for result in one_round:
            accuracy = f"{result.final_val_accuracy:.3f}" if result.final_val_accuracy is not None else "n/a"
            lines.append(
                f"| {number} | {result.variant} | {result.wall_s:.1f} | {result.ratio_to_plain:.2f}x | "
                f"{result.samples_per_s_wall:.0f} | {result.samples_per_s_in_epochs:.0f} | "
                f"{result.first_step_s:.1f} | {accuracy} |"
            )
    return "\n".join(lines)


def verdict(rounds: list[list[VariantResult]]) -> tuple[float, str]:
    ratios = [one_round[1].ratio_to_plain for one_round in rounds]
    median = statistics.median(ratios)
    listed = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
    met = "met" if median <= TARGET_RATIO else "NOT met"
    return median, (
        f"Ray Train 1 worker / plain wall time per round: {listed}; median {median:.2f}x "
        f"(target <= {TARGET_RATIO}x): {met}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "jobs" / "configs" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three variants")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    config = load_config(args.config, overrides)
    torch.set_num_threads(config.train.torch_threads)
    load_before = os.getloadavg()
    # Cluster start is not what we compare: start it first, with room for 2 workers.
    init_local_ray(num_cpus=max(2, os.cpu_count() or 1), log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="hrm-train-bench-") as scratch:
            rounds = [run_round(config, Path(scratch), number) for number in range(args.repeats)]
    finally:
        ray.shutdown()
    table = render(rounds, Path(args.config).name, config.train.epochs)
    ray_one, summary_line = verdict(rounds)
    print(table)
    print(f"\n{summary_line}")
    payload = {
        "config": args.config,
        "epochs": config.train.epochs,
        "repeats": args.repeats,
        "rounds": [[asdict(result) for result in one_round] for one_round in rounds],
        "ray1_over_plain_median": ray_one,
        "target_ratio": TARGET_RATIO,
        "target_met": ray_one <= TARGET_RATIO,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "python": python_platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "ray_train_health_check_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0 (default)"),
        },
        "table": table,
        "verdict": summary_line,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
