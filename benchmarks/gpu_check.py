"""The GPU benchmarks, side by side in one run: training throughput and MFU, and the GPU engines.

    python -m benchmarks.gpu_check                                  # GPU preset, this source tree
    git worktree add /tmp/before <rev> && python -m benchmarks.gpu_check --baseline /tmp/before/platform

Training (each variant in a fresh process, `benchmarks/gpu_train_step.py`, GPU preset on a smaller market,
1 worker): `--baseline`'s source root (the step as it was), then this tree's eager step and its
`train.compile=true` step. Samples/s come from each epoch's own measure after warm-up batches (compilation
excluded; its seconds are reported); TFLOP/s and MFU from `model/flops.py` against the device's dense bf16
peak. With `--profile`, a torch-profiler table of each variant goes beside the results.

Engines (the checkpoint the compiled run wrote, all on the GPU): fp32 eager (the reference), bf16, cuda_graph
and cuda_graph_compiled. Batch-1 latency with all M segments (no halting: the same work for every engine),
p50 and p90 over interleaved rounds, every call synchronised; throughput at large batches; agreement with
fp32 on held-out windows as served (export's check); load time (what a replica pays at start).

Writes benchmarks/results/gpu_check.json (or --out) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hrm_platform.checkpoint import load_checkpoint
from hrm_platform.config import load_config
from hrm_platform.data.features import FEATURE_NAMES
from hrm_platform.model.flops import inference_flops_per_sample, training_flops_per_sample_segment
from hrm_platform.serving.engine import InferenceEngine, synchronize
from hrm_platform.serving.export import ExportSettings, compare_engines, held_out_windows
from hrm_platform.training.throughput import throughput_figures

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"
GPU_PRESET = REPO_ROOT / "jobs" / "configs" / "gpu.yaml"
# The GPU preset's model on a market small enough to build in seconds (the throughput does not depend on it).
MARKET = ["data.n_instruments=8", "data.n_bars=20000", "train.num_workers=1"]
ENGINES = ("eager", "bf16", "cuda_graph", "cuda_graph_compiled")
LARGE_BATCHES = (512, 1024)
TIMING_BUDGET_S = 3.0  # per engine and batch size: repeats = budget / one call, within the bounds below
MIN_REPEATS, MAX_REPEATS = 15, 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="another revision's source root (its platform/)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--profile", action="store_true", help="torch-profiler tables beside the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="engines measured on this checkpoint (with --skip-training); default: the eager run's, in a temp dir",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no GPU visible to torch; nothing to measure", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    checkpoint = args.checkpoint or Path(tempfile.mkdtemp(prefix="hrm-gpu-check-")) / "checkpoint"
    if not args.skip_training:
        results["training"] = training_rounds(args, checkpoint)
        _write(args.out, results)
        print(training_table(results["training"]), flush=True)
    results["engines"] = engine_figures(checkpoint)
    _write(args.out, results)
    print(engine_table(results["engines"]), flush=True)
    return 0


# -------------------------------------------------------------------------------------------- training


def training_rounds(args: argparse.Namespace, checkpoint: Path) -> list[dict[str, Any]]:
    variants: list[tuple[str, Path | None, list[str]]] = []
    if args.baseline is not None:
        variants.append(("before (--baseline)", args.baseline, []))
    variants += [("eager step", None, []), ("train.compile", None, ["train.compile=true"])]
    config = load_config(GPU_PRESET, MARKET)
    per_segment = training_flops_per_sample_segment(config.model, config.data.window, len(FEATURE_NAMES))
    rows = []
    for label, source_root, overrides in variants:
        extra = ["--save", str(checkpoint)] if label == "eager step" else []  # what the engines are measured on
        if args.profile:
            extra += ["--profile", str(args.out.parent / f"gpu_profile_{_slug(label)}.txt")]
        try:
            measured = _train_step_process(source_root, args.batches, MARKET + overrides, extra)
        except RuntimeError as error:  # reported, and the other variants still run
            print(f"  {label}: FAILED\n{error}", flush=True)
            rows.append({"variant": label, "error": str(error)[-2000:]})
            continue
        flops = measured["samples_per_s"] * measured["segments_run_per_batch"] * per_segment
        speed = throughput_figures(flops, 1.0, torch.device("cuda", 0), world_size=1)
        rows.append(
            {"variant": label, **measured, "model_flops_per_sample": flops / measured["samples_per_s"], **speed}
        )
        print(f"  {label}: {measured['samples_per_s']:.0f} samples/s", flush=True)
    measured_rows = [row for row in rows if "error" not in row]
    for row in measured_rows:
        row["ratio_to_first"] = row["samples_per_s"] / measured_rows[0]["samples_per_s"]
    return rows


def _train_step_process(source_root: Path | None, batches: int, overrides: list[str], extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "benchmarks.gpu_train_step", "--config", str(GPU_PRESET), "--batches", str(batches),
        *extra, *overrides,
    ]
    env = dict(os.environ)
    if source_root is not None:  # the other revision's package first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(source_root.resolve()), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def training_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| training step (1 worker) | samples/s | x first | TFLOP/s | MFU | warm-up s | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error'].strip().splitlines()[-1][:80]} |||||")
            continue
        mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
        lines.append(
            f"| {row['variant']} | {row['samples_per_s']:.0f} | {row['ratio_to_first']:.2f} | "
            f"{row['achieved_tflops']:.1f} | {mfu} | {row['warmup_s']:.1f} | {row['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- engines


def engine_figures(checkpoint: Path) -> dict[str, Any]:
    engines, load_s, failed = {}, {}, {}
    for name in ENGINES:
        started = time.perf_counter()
        try:
            engines[name] = InferenceEngine.from_checkpoint(checkpoint, variant=name, device="cuda")
        except Exception as error:  # noqa: BLE001 - a variant that cannot load is reported, the rest measured
            failed[name] = f"{type(error).__name__}: {error}"[-2000:]
            print(f"  {name}: FAILED {failed[name]}", flush=True)
            continue
        load_s[name] = time.perf_counter() - started
        print(f"  loaded {name} in {load_s[name]:.1f} s", flush=True)
    loaded = load_checkpoint(checkpoint)
    windows = held_out_windows(loaded, 512)  # (N, W, F)
    settings = ExportSettings(repeats_batch1=10, repeats_batch32=5)
    agreement = {entry.name: entry for entry in compare_engines(engines, windows, settings, batch_size=64)}
    batch1 = interleaved_latency(engines, windows[:1])
    large = {size: interleaved_latency(engines, _repeat_to(windows, size)) for size in LARGE_BATCHES}
    model = engines["eager"].model
    flops_per_window = inference_flops_per_sample(
        model.config, model.window, model.n_features, model.config.max_segments
    )
    rows = []
    for name in engines:
        row = {
            "variant": name,
            "load_s": load_s[name],
            "batch1_p50_ms": batch1[name]["p50"],
            "batch1_p90_ms": batch1[name]["p90"],
            "agreement": agreement[name].agreement,
            "max_probability_diff": agreement[name].max_probability_diff,
            "segments_agreement": agreement[name].segments_agreement,
        }
        for size in LARGE_BATCHES:
            seconds = large[size][name]["p50"] / 1e3
            row[f"batch{size}_windows_per_s"] = size / seconds
            row[f"batch{size}_tflops"] = size * flops_per_window / seconds / 1e12
        rows.append(row)
    return {"segments": model.config.max_segments, "rows": rows, "failed": failed}


def interleaved_latency(engines: dict[str, InferenceEngine], windows: torch.Tensor) -> dict[str, dict[str, float]]:
    """p50/p90 ms of engine.run (M segments, no halting), engines interleaved, each call synchronised."""
    budgets = {
        name: torch.full((windows.shape[0],), engine.max_segments, dtype=torch.int64)
        for name, engine in engines.items()
    }

    def once(name: str) -> float:
        engine = engines[name]
        synchronize(engine.device)
        started = time.perf_counter()
        engine.run(windows, budgets[name], use_halting=False)
        synchronize(engine.device)
        return (time.perf_counter() - started) * 1e3

    first = {name: max(once(name), once(name)) for name in engines}  # warm, and the cost of one call
    repeats = int(min(MAX_REPEATS, max(MIN_REPEATS, TIMING_BUDGET_S * 1e3 / max(first.values()))))
    timings: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name in engines:
            timings[name].append(once(name))
    return {
        name: {"p50": statistics.median(values), "p90": statistics.quantiles(values, n=10)[-1], "repeats": repeats}
        for name, values in timings.items()
    }


def engine_table(figures: dict[str, Any]) -> str:
    sizes = " | ".join(f"b{size} windows/s (TFLOP/s)" for size in LARGE_BATCHES)
    lines = [
        f"| engine ({figures['segments']} segments) | load s | b1 p50 ms | b1 p90 ms | {sizes} | agree | max dp |",
        "|---|---|---|---|" + "---|" * len(LARGE_BATCHES) + "---|---|",
    ]
    for row in figures["rows"]:
        large = " | ".join(
            f"{row[f'batch{size}_windows_per_s']:.0f} ({row[f'batch{size}_tflops']:.1f})" for size in LARGE_BATCHES
        )
        lines.append(
            f"| {row['variant']} | {row['load_s']:.1f} | {row['batch1_p50_ms']:.2f} | {row['batch1_p90_ms']:.2f} | "
            f"{large} | {row['agreement']:.1%} | {row['max_probability_diff']:.4f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- helpers


def _repeat_to(windows: torch.Tensor, size: int) -> torch.Tensor:
    repeats = -(-size // windows.shape[0])
    return windows.repeat(repeats, 1, 1)[:size]


def _slug(label: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in label).strip("_")


def _write(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
