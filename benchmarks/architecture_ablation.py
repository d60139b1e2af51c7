"""Does the reasoning pay? hrm, trm (both gradients) and a transformer on the same walk-forward folds.

Each variant is the demo preset (jobs/configs/demo.yaml) with one change of architecture, at the same
parameter count (checked: within +-10 % of hrm's) and the same training budget (epochs, batch size, learning
rate, samples): what separates them is the recurrence and its gradient alone. Halting (q_learning) and the
weights (no EMA) are the same for all.

    hrm             two stacks of 1 block, h_cycles x l_cycles = 1 x 2, one-step gradient
    trm_one_step    one shared stack of 2 blocks, same cycles, one-step gradient
    trm_last_cycle  the same, full backward through the last cycle (TRM)
    transformer     the 2 blocks once per segment, no carried state

Every variant runs a K-fold walk-forward (`hrm evaluate --walk-forward`: one Ray Train DDP run per fold) for
each seed (train.seed; the market is the same). The trained baselines (LightGBM, MLP, transformer) are
fitted on the same folds with the hrm runs, baseline seed = seed. After seed 0 the last fold's checkpoint of
each variant is exported (eager, jit_int8, compiled) and the chosen engine's batch-1 latency recorded.

    .venv/bin/python -m benchmarks.architecture_ablation                      # default market, 3 seeds
    .venv/bin/python -m benchmarks.architecture_ablation --data bars.csv      # any OHLCV file
    .venv/bin/python -m benchmarks.architecture_ablation --seeds 1 --folds 2 --set train.epochs=1  # a quick look

Runs are kept under --out (default artifacts/ablation; a finished fold is reused when run again). Writes
benchmarks/results/architecture_ablation.{json,md} (the Markdown table is the README's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from hrm_platform.config import PlatformConfig, load_config

RESULTS = Path(__file__).resolve().parent / "results" / "architecture_ablation"
DEMO_PRESET = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"
VARIANTS: dict[str, list[str]] = {
    "hrm": ["model.arch=hrm"],
    "trm_one_step": ["model.arch=trm", "model.h_layers=2", "model.l_layers=2", "model.gradient=one_step"],
    "trm_last_cycle": ["model.arch=trm", "model.h_layers=2", "model.l_layers=2", "model.gradient=last_cycle"],
    "transformer": ["model.arch=transformer"],
}
BASELINE_ROWS = ("lightgbm", "mlp", "transformer", "buy_and_hold", "momentum", "oracle")
PARAMETER_TOLERANCE = 0.10


def variant_config(base: list[str], variant: str, seed: int, data: Path | None) -> PlatformConfig:
    overrides = [*base, *VARIANTS[variant], f"train.seed={seed}", f"eval.baseline_seed={seed}",
                 f"train.name={variant}-s{seed}"]
    if variant != "hrm":
        overrides.append("eval.baselines=[]")  # fitted once per seed, with the hrm runs
    if data is not None:
        overrides += ["data.source=file", f"data.path={data}"]
    return load_config(DEMO_PRESET, overrides)


def parameter_counts(configs: dict[str, PlatformConfig]) -> dict[str, int]:
    """Distinct trainable parameters of each variant; refuses counts more than 10 % off hrm's."""
    from hrm_platform.data.features import FEATURE_NAMES
    from hrm_platform.model.hrm import HRM, count_parameters

    counts = {}
    for name, config in configs.items():
        model = HRM(config.model, n_features=len(FEATURE_NAMES), window=config.data.window)
        counts[name] = count_parameters(model)
    reference = counts["hrm"]
    off = {name: count for name, count in counts.items() if abs(count / reference - 1) > PARAMETER_TOLERANCE}
    if off:
        raise SystemExit(f"parameter counts not matched within 10 % of hrm's {reference}: {off}")
    return counts


def run_variant(config: PlatformConfig, folds: int, out: Path) -> dict[str, Any]:
    """One walk-forward; its pooled figures and the folds' training speed."""
    from hrm_platform.checkpoint import load_manifest
    from hrm_platform.evaluation.walk_forward import run_walk_forward
    from hrm_platform.evaluation.walk_forward_report import write_walk_forward_report

    started = time.perf_counter()
    runs = run_walk_forward(config, folds, out, progress=lambda line: print(f"    {line}", flush=True))
    report = write_walk_forward_report(runs, config, out / "report")
    speeds = [load_manifest(run.checkpoint)["metrics"]["latest"].get("samples_per_s") for run in runs]
    return {
        "pooled": report.metrics["pooled"],
        "train_samples_per_s": statistics.mean(speed for speed in speeds if speed) if any(speeds) else None,
        "last_checkpoint": runs[-1].checkpoint,
        "wall_s": time.perf_counter() - started,
    }


def batch1_latency(checkpoint: str) -> dict[str, Any]:
    """Export the checkpoint (eager, jit_int8, compiled) and report the chosen engine's batch-1 latency."""
    from hrm_platform.serving.export import ExportSettings, export_engine

    report = export_engine(checkpoint, variants=("eager", "jit_int8", "compiled"),
                           settings=ExportSettings(measure_ready=False))
    chosen = next(figures for figures in report.variants if figures.status == "chosen")
    eager = next(figures for figures in report.variants if figures.name == "eager")
    return {"variant": chosen.name, "latency_batch1_ms": chosen.latency_batch1_ms,
            "eager_latency_batch1_ms": eager.latency_batch1_ms}


def strategy_row(pooled_by_seed: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
    """One strategy over seeds: mean Sharpe, its CI bounds averaged over seeds, the seeds' range; the same for
    IC; accuracy; mean segments (models only)."""
    portfolios = [pooled["portfolio"][strategy] for pooled in pooled_by_seed]
    sharpes = [p["sharpe"] for p in portfolios]
    row: dict[str, Any] = {
        "sharpe": statistics.mean(sharpes),
        "sharpe_ci": [statistics.mean(p["sharpe_ci"][0] for p in portfolios),
                      statistics.mean(p["sharpe_ci"][1] for p in portfolios)],
        "sharpe_range": [min(sharpes), max(sharpes)],
        "seeds": len(portfolios),
    }
    ics = [pooled["information_coefficient"].get(strategy, {}).get("pearson") for pooled in pooled_by_seed]
    if all(ics):
        row["ic"] = statistics.mean(ic["estimate"] for ic in ics)
        row["ic_ci"] = [statistics.mean(ic["low"] for ic in ics), statistics.mean(ic["high"] for ic in ics)]
    accuracies = [pooled["accuracy"].get(strategy) for pooled in pooled_by_seed]
    if all(value is not None for value in accuracies):
        row["accuracy"] = statistics.mean(accuracies)
    return row


def summarise(results: dict[str, list[dict[str, Any]]], counts: dict[str, int],
              latencies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """variant or baseline -> its row of the table."""
    rows: dict[str, dict[str, Any]] = {}
    for variant, seeds in results.items():
        pooled = [seed["pooled"] for seed in seeds]
        row = strategy_row(pooled, "model")
        acts = [p["act"]["mean_segments"] for p in pooled if p.get("act")]
        row.update(
            parameters=counts[variant],
            mean_segments=statistics.mean(acts) if acts else None,
            train_samples_per_s=statistics.mean(s["train_samples_per_s"] for s in seeds if s["train_samples_per_s"]),
            later_segments=[p["act"]["verdict"] for p in pooled if p.get("act")][:1],
            **latencies.get(variant, {}),
        )
        rows[variant] = row
    hrm_pooled = [seed["pooled"] for seed in results.get("hrm", [])]
    for strategy in BASELINE_ROWS:
        if hrm_pooled and all(strategy in pooled["portfolio"] for pooled in hrm_pooled):
            rows[f"baseline: {strategy}"] = strategy_row(hrm_pooled, strategy)
    return rows


def render_markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    level = f"{meta['confidence']:.0%}"
    header = (f"| | params | Sharpe (mean of seeds) [{level} CI] | seeds' Sharpe range | IC [{level} CI] | accuracy "
              "| mean segments | train samples/s | batch-1 ms (engine) |")
    lines = [header, "|" + "---|" * 9]
    for name, row in rows.items():
        ic = f"{row['ic']:+.3f} [{row['ic_ci'][0]:+.3f}, {row['ic_ci'][1]:+.3f}]" if "ic" in row else "-"
        latency = (f"{row['latency_batch1_ms']:.2f} ({row['variant']})" if row.get("latency_batch1_ms") else "-")
        lines.append(
            f"| {name} | {row.get('parameters', '-')} | {row['sharpe']:+.2f} [{row['sharpe_ci'][0]:+.2f}, "
            f"{row['sharpe_ci'][1]:+.2f}] | {row['sharpe_range'][0]:+.2f} .. {row['sharpe_range'][1]:+.2f} | {ic} | "
            f"{_fmt(row.get('accuracy'), '.3f')} | {_fmt(row.get('mean_segments'), '.2f')} | "
            f"{_fmt(row.get('train_samples_per_s'), '.0f')} | {latency} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--data", type=Path, help="an OHLCV CSV or Parquet file instead of the synthetic market")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("artifacts/ablation"))
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value over the demo preset")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the .json and .md go (no suffix)")
    args = parser.parse_args()

    import ray

    from hrm_platform.local_ray import init_local_ray

    configs = {v: variant_config(args.overrides, v, 0, args.data) for v in args.variants}
    counts = parameter_counts({"hrm": variant_config(args.overrides, "hrm", 0, args.data), **configs})
    print("parameters: " + ", ".join(f"{name} {count}" for name, count in counts.items()), flush=True)
    init_local_ray(num_cpus=os.cpu_count() or 1, log_to_driver=False)
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in args.variants}
    latencies: dict[str, dict[str, Any]] = {}
    try:
        for seed in range(args.seeds):
            for variant in args.variants:
                print(f"{variant}, seed {seed}:", flush=True)
                config = variant_config(args.overrides, variant, seed, args.data)
                outcome = run_variant(config, args.folds, args.out / f"{variant}-s{seed}")
                results[variant].append(outcome)
                model = outcome["pooled"]["portfolio"]["model"]
                print(f"  Sharpe {model['sharpe']:+.2f}, {outcome['wall_s']:.0f} s", flush=True)
                if seed == 0:
                    latencies[variant] = batch1_latency(outcome["last_checkpoint"])
    finally:
        ray.shutdown()
    base = variant_config(args.overrides, "hrm", 0, args.data)
    meta = {"seeds": args.seeds, "folds": args.folds, "data": str(args.data or "synthetic default market"),
            "overrides": args.overrides, "confidence": base.eval.confidence, "epochs": base.train.epochs}
    rows = summarise(results, counts, latencies)
    table = render_markdown(rows, meta)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": results},
                                                            indent=2, default=str))
    args.results.with_suffix(".md").write_text(table + "\n")
    print(table)
    for name in args.variants:
        print(f"{name}: {rows[name]['later_segments'][0] if rows[name]['later_segments'] else ''}")


if __name__ == "__main__":
    main()
