"""Does the HRM learn, do later segments help, and does ACT halting pay? Plus size and batch-1 latency.

Trains a model in-process (no Ray) with the deep-supervision step for a fixed wall-clock budget on the
default synthetic data config, then reports on the validation split:

- action accuracy at the limit vs the majority-class fraction;
- accuracy after each segment (first vs last);
- ACT: accuracy and mean segments with halting vs always running the limit;
- parameter count and batch-1 ACT-inference latency (eager fp32, 1 thread, median) of the default ModelConfig.

    .venv/bin/python -m benchmarks.model_learning                 # 180 s of training, 1 thread
    .venv/bin/python -m benchmarks.model_learning --seconds 60 --threads 2 --set model.d_model=64

The trained model is SMALL_CONFIG (below) on top of the defaults: the default ModelConfig (d_model 128, two
blocks per module) sees only a few dozen batches in 3 CPU minutes; it is the one whose size and latency
are reported.

Writes benchmarks/results/model_learning.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hrm_platform.config import ModelConfig, PlatformConfig, TrainConfig, load_config
from hrm_platform.data.dataset import DatasetBundle, WindowDataset, build_datasets
from hrm_platform.model.act import deep_supervision_step, outputs_per_segment, predict
from hrm_platform.model.hrm import HRM, count_parameters

RESULTS = Path(__file__).resolve().parent / "results" / "model_learning.json"
SMALL_CONFIG = (
    "model.d_model=32", "model.n_heads=2", "model.h_layers=1", "model.l_layers=1", "model.h_cycles=1",
    "model.l_cycles=2", "train.lr=0.002", "train.batch_size=128",
)


@dataclass
class ActFigures:
    accuracy_per_segment: list[float]
    accuracy_at_limit: float
    accuracy_with_halting: float
    mean_segments_with_halting: float
    segment_histogram: list[int]  # samples that stopped after 1..M segments


def train_for(
    model: HRM, bundle: DatasetBundle, train: TrainConfig, seconds: float, seed: int = 0, log_every: float = 30.0
) -> dict:
    """Deep-supervision training on shuffled train batches until the time budget is spent."""
    config = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    started, last_log, batches, samples = time.perf_counter(), time.perf_counter(), 0, 0

    def lr_factor(step: int) -> float:
        """Linear warm-up, then a cosine to 10% over the time budget (the step count is not known ahead)."""
        progress = min(1.0, (time.perf_counter() - started) / seconds)
        return min(1.0, (step + 1) / max(1, train.warmup_steps)) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = np.random.default_rng(seed)
    model.train()
    while time.perf_counter() - started < seconds:
        order = generator.permutation(len(bundle.train))
        for first in range(0, len(order) - train.batch_size + 1, train.batch_size):
            windows, actions, quantities = bundle.train.batch(order[first : first + train.batch_size])
            metrics = deep_supervision_step(
                model, windows, actions, quantities, optimizer,
                max_segments=config.max_segments, halt_exploration=config.halt_exploration,
                quantity_loss_weight=train.quantity_loss_weight, q_loss_weight=train.q_loss_weight,
                grad_clip=train.grad_clip, before_optimizer_step=None,
            )
            schedule.step()
            batches, samples = batches + 1, samples + windows.shape[0]
            if time.perf_counter() - last_log > log_every:
                last_log = time.perf_counter()
                print(f"  {last_log - started:6.0f}s batch {batches:5d}  "
                      f"loss {metrics.loss[0]:.3f}->{metrics.loss[-1]:.3f}  "
                      f"acc {metrics.accuracy[0]:.3f}->{metrics.accuracy[-1]:.3f}  "
                      f"segments {metrics.segments_used:.2f}", flush=True)
            if time.perf_counter() - started >= seconds:
                break
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "batches": batches, "samples": samples, "epochs": samples / len(bundle.train)}


def evaluate_act(model: HRM, dataset: WindowDataset, batch_size: int = 512) -> ActFigures:
    """Validation figures: accuracy per segment (no halting), at the limit, and with ACT halting."""
    limit = model.config.max_segments
    model.eval()
    correct_per_segment = np.zeros(limit)
    correct_halting, segments_total, histogram, count = 0, 0, np.zeros(limit, dtype=np.int64), 0
    for first in range(0, len(dataset), batch_size):
        windows, actions, _ = dataset.batch(np.arange(first, min(first + batch_size, len(dataset))))
        for index, outputs in enumerate(outputs_per_segment(model, windows, limit)):
            correct_per_segment[index] += int((outputs.action_logits.argmax(-1) == actions).sum())
        halting = predict(model, windows)
        correct_halting += int((halting.probabilities.argmax(-1) == actions).sum())
        segments_total += int(halting.segments_used.sum())
        histogram += np.bincount(halting.segments_used.numpy() - 1, minlength=limit)
        count += windows.shape[0]
    model.train()
    per_segment = (correct_per_segment / count).tolist()
    return ActFigures(per_segment, per_segment[-1], correct_halting / count, segments_total / count, histogram.tolist())


def batch1_latency_ms(model: HRM, windows: torch.Tensor, runs: int = 200) -> dict:
    """Full ACT inference on single windows (eager fp32; the caller sets threads): wall and CPU-time medians.

    The CPU time of the calling thread is what the inference itself costs; on a shared, overloaded machine
    the wall time also counts the time the thread waited for a core.
    """
    model.eval()
    wall, cpu, segments = [], [], []
    for index in range(runs + 10):
        window = windows[index % windows.shape[0]][None]
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        result = predict(model, window)
        cpu_ms, wall_ms = (time.thread_time() - cpu_start) * 1000, (time.perf_counter() - wall_start) * 1000
        if index >= 10:  # warm-up excluded
            wall.append(wall_ms)
            cpu.append(cpu_ms)
            segments.append(int(result.segments_used[0]))
    wall.sort()
    return {"median_ms": statistics.median(wall), "p90_ms": wall[int(0.9 * len(wall))],
            "median_cpu_ms": statistics.median(cpu), "mean_segments": sum(segments) / len(segments), "runs": runs,
            "load_average_1min": os.getloadavg()[0]}


def run(config: PlatformConfig, seconds: float, threads: int, seed: int, latency: bool = True) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    bundle = build_datasets(config.data)
    model = HRM(config.model, n_features=bundle.train.n_features, window=config.data.window)
    print(f"trained config: {config.model.model_dump()}  train: lr={config.train.lr} batch={config.train.batch_size} "
          f"q_loss_weight={config.train.q_loss_weight}; {count_parameters(model):,} parameters; {threads} threads")
    training = train_for(model, bundle, config.train, seconds, seed)
    figures = evaluate_act(model, bundle.val)
    majority = bundle.majority_fraction("val")
    report = {
        "model_config": config.model.model_dump(),
        "train": {"lr": config.train.lr, "batch_size": config.train.batch_size,
                  "q_loss_weight": config.train.q_loss_weight, "threads": threads, **training},
        "parameters": count_parameters(model),
        "val_majority_fraction": majority,
        "val": asdict(figures),
    }
    if latency:
        report.update(_latencies(model, bundle, seed))
    return report


def _latencies(model: HRM, bundle: DatasetBundle, seed: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    default_model = HRM(ModelConfig(), n_features=bundle.train.n_features, window=64)
    default_windows = _windows_of_length(bundle, 64)
    latency_default_untrained = batch1_latency_ms(default_model, default_windows)
    latency_trained = batch1_latency_ms(model, bundle.val.batch(np.arange(64))[0])
    return {
        "default_model_parameters": count_parameters(default_model),
        "default_model_latency_batch1_untrained": latency_default_untrained,
        "trained_model_latency_batch1": latency_trained,
    }


def _windows_of_length(bundle: DatasetBundle, window: int) -> torch.Tensor:
    if bundle.val.window == window:
        return bundle.val.batch(np.arange(64))[0]
    return torch.randn(64, window, bundle.train.n_features)


def print_report(report: dict) -> None:
    val, limit, train = report["val"], report["model_config"]["max_segments"], report["train"]
    rows = [
        ("parameters (trained config)", f"{report['parameters']:,}"),
        ("training", f"{train['seconds']:.0f} s, {train['batches']} batches, {train['epochs']:.2f} epochs"),
        ("val majority-class fraction", f"{report['val_majority_fraction']:.3f}"),
        (f"val accuracy, always {limit} segments", f"{val['accuracy_at_limit']:.3f}"),
        ("val accuracy per segment", " ".join(f"{value:.3f}" for value in val["accuracy_per_segment"])),
        ("val accuracy with ACT halting", f"{val['accuracy_with_halting']:.3f}"),
        ("mean segments with halting", f"{val['mean_segments_with_halting']:.2f} of {limit}"),
        ("halting histogram (1..M)", str(val["segment_histogram"])),
        ("halting - limit accuracy (points)", _points(val["accuracy_with_halting"] - val["accuracy_at_limit"])),
    ]
    if "default_model_parameters" in report:
        rows += [
            ("default ModelConfig parameters", f"{report['default_model_parameters']:,}"),
            ("default ModelConfig batch-1 ACT latency", _latency(report["default_model_latency_batch1_untrained"])),
            ("trained model batch-1 ACT latency", _latency(report["trained_model_latency_batch1"])),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _points(difference: float) -> str:
    return f"{100 * difference:+.2f}"


def _latency(figures: dict) -> str:
    return (f"median {figures['median_ms']:.2f} ms wall (p90 {figures['p90_ms']:.2f}), "
            f"{figures['median_cpu_ms']:.2f} ms CPU; "
            f"{figures['mean_segments']:.2f} segments, eager fp32, 1 thread, load {figures['load_average_1min']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="training wall-clock budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (2 on an idle machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None, help="YAML preset (default: the built-in defaults)")
    parser.add_argument(
        "--set", action="append", default=[], help="override on top of SMALL_CONFIG, e.g. model.d_model=64"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency measurements")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON report goes")
    args = parser.parse_args()
    config = load_config(args.config, [*SMALL_CONFIG, *args.set])
    report = run(config, args.seconds, args.threads, args.seed, latency=not args.no_latency)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=_json_safe))
    print(f"wrote {args.out}")


def _json_safe(value):
    return str(value) if not isinstance(value, float) or math.isfinite(value) else None


if __name__ == "__main__":
    main()
