"""Export's measurements, side by side in one process: latency of every engine, agreement with eager fp32
on held-out windows, a fresh replica's ready time, and the choice among the variants that passed.
Every timing waits for the device it measures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hrm_platform.checkpoint import LoadedCheckpoint
from hrm_platform.config import ExportConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.serving.engine import InferenceEngine, synchronize
from hrm_platform.serving.export_report import ExportReport, VariantFigures
from hrm_platform.serving.variants import variant_info


class ExportDataError(ValueError):
    """The checkpoint's data holds too few held-out windows for the agreement check; the message says what to do."""


def held_out_windows(loaded: LoadedCheckpoint, count: int, minimum: int | None = None) -> Tensor:
    """(N, W, F) windows spread over the test split (val added when test is short), checkpoint's stats.

    ExportDataError when there are fewer than `minimum` (None: the checkpoint's export.min_eval_windows).
    """
    minimum = loaded.config.export.min_eval_windows if minimum is None else minimum
    bundle = build_datasets(loaded.config.data, feature_stats=loaded.feature_spec.stats)
    parts = []
    remaining = max(count, minimum)
    for split in (bundle.test, bundle.val):
        if remaining <= 0 or len(split) == 0:
            continue
        take = min(remaining, len(split))
        positions = np.unique(np.linspace(0, len(split) - 1, take).round().astype(np.int64))
        parts.append(split.batch(positions)[0])
        remaining -= positions.shape[0]
    found = sum(part.shape[0] for part in parts)
    if found < minimum:
        raise ExportDataError(too_few_windows_message(found, minimum))
    return torch.cat(parts)


def too_few_windows_message(found: int, minimum: int) -> str:
    return (
        f"only {found} held-out windows (test + val) in this data; the agreement check needs "
        f"export.min_eval_windows={minimum}: use more bars, or lower it (e.g. export.min_eval_windows={max(1, found)})"
    )


def measure_latency(
    engines: dict[str, InferenceEngine], figures: list[VariantFigures], windows: Tensor, settings: ExportConfig
) -> None:
    for batch_size, repeats, attribute in (
        (1, settings.repeats_batch1, "batch1"),
        (32, settings.repeats_batch32, "batch32"),
    ):
        medians = round_robin_medians(engines, windows[:batch_size], repeats)
        for entry in figures:
            if entry.name in medians:
                setattr(entry, f"latency_{attribute}_ms", medians[entry.name])
                setattr(entry, f"speedup_{attribute}", medians["eager"] / medians[entry.name])


def round_robin_medians(engines: dict[str, InferenceEngine], windows: Tensor, repeats: int) -> dict[str, float]:
    """Median ms of `engine.run` (M segments, no halting) per engine, interleaved so noise hits all alike."""
    budgets = {
        name: torch.full((windows.shape[0],), engine.max_segments, dtype=torch.int64)
        for name, engine in engines.items()
    }
    calls: dict[str, Callable[[], Any]] = {
        name: (lambda engine=engine, budget=budgets[name]: engine.run(windows, budget, use_halting=False))
        for name, engine in engines.items()
    }
    for call in calls.values():
        for _ in range(2):
            call()
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(engines[name].device)
            started = time.perf_counter()
            call()
            synchronize(engines[name].device)
            timings[name].append((time.perf_counter() - started) * 1e3)
    return {name: float(np.median(values)) for name, values in timings.items()}


def compare_engines(
    engines: dict[str, InferenceEngine], windows: Tensor, settings: ExportConfig, batch_size: int
) -> list[VariantFigures]:
    """Latency (batch 1 and 32) and agreement with engines["eager"] of engines built elsewhere (the GPU
    check builds its fp32 reference on the GPU): export's measurements without building or writing."""
    figures = [VariantFigures(name, variant_info(name).description) for name in engines]
    measure_latency(engines, figures, windows, settings)
    check_agreement(engines, figures, windows, settings, batch_size)
    return figures


def check_agreement(
    engines: dict[str, InferenceEngine],
    figures: list[VariantFigures],
    windows: Tensor,
    settings: ExportConfig,
    batch_size: int,
) -> None:
    """Compare every variant with eager fp32, in batches of the serving batch size (int8 activation scales
    are per batch)."""
    reference_served = _run_chunked(engines["eager"], windows, True, batch_size)
    reference_fixed = _run_chunked(engines["eager"], windows, False, batch_size)
    for entry in figures:
        if entry.name not in engines:
            continue
        served = _run_chunked(engines[entry.name], windows, True, batch_size)
        fixed = _run_chunked(engines[entry.name], windows, False, batch_size)
        entry.agreement = float((served["actions"] == reference_served["actions"]).mean())
        entry.segments_agreement = float((served["segments"] == reference_served["segments"]).mean())
        entry.max_probability_diff = float(np.abs(fixed["probabilities"] - reference_fixed["probabilities"]).max())
        entry.max_probability_diff_served = float(
            np.abs(served["probabilities"] - reference_served["probabilities"]).max()
        )
        entry.status, entry.reason = _judge(entry, settings)


def _judge(entry: VariantFigures, settings: ExportConfig) -> tuple[str, str]:
    if entry.agreement < settings.min_agreement:
        return "failed", f"action agreement {entry.agreement:.2%} < {settings.min_agreement:.0%}"
    if entry.max_probability_diff > settings.max_probability_diff:
        return "failed", f"probability difference {entry.max_probability_diff:.3f} > {settings.max_probability_diff}"
    return "passed", ""


def _run_chunked(engine: InferenceEngine, windows: Tensor, use_halting: bool, chunk: int) -> dict[str, np.ndarray]:
    probabilities, segments = [], []
    for start in range(0, windows.shape[0], chunk):
        result = engine.run(windows[start : start + chunk], use_halting=use_halting)
        probabilities.append(result.probabilities.float().cpu().numpy())
        segments.append(result.segments_used.cpu().numpy())
    stacked = np.concatenate(probabilities)  # (N, 3)
    return {"probabilities": stacked, "actions": stacked.argmax(axis=1), "segments": np.concatenate(segments)}


def measure_ready(report: ExportReport, settings: ExportConfig) -> None:
    """Seconds for a fresh process to import the engine, verify, load and warm up each passing variant.

    Eager fp32 goes first: its time is the floor every replica pays (interpreter, torch, checkpoint
    verification) under the machine's current load. A variant is servable when it is ready within
    max(max_ready_s, max_ready_vs_eager x that floor): on a quiet machine the absolute budget decides; on a
    loaded one, where even eager is slow, a variant that compiles at start still stands out.
    """
    if not settings.measure_ready:
        return
    floor_s: float | None = None
    for entry in report.variants:  # eager is first (see _variant_names)
        if not entry.passed_checks:
            continue
        entry.ready_s, problem = time_fresh_load(
            report.checkpoint, entry.name, report.torch_threads, settings.ready_timeout_s
        )
        if problem:
            entry.status, entry.reason = "not servable", problem
            continue
        if entry.name == "eager":
            floor_s = entry.ready_s
        limit_s = max(settings.max_ready_s, settings.max_ready_vs_eager * (floor_s or 0.0))
        if entry.ready_s > limit_s:
            entry.status = "not servable"
            entry.reason = (
                f"a fresh replica needs {entry.ready_s:.1f} s to be ready (limit {limit_s:.1f} s; "
                f"eager fp32 beside it: {floor_s or float('nan'):.1f} s)"
            )


def time_fresh_load(checkpoint: Path, variant: str, torch_threads: int, timeout_s: float) -> tuple[float, str]:
    """(wall seconds, problem or '') of `python -m hrm_platform.serving.engine CHECKPOINT --variant V`."""
    command = [
        sys.executable,
        "-m",
        "hrm_platform.serving.engine",
        str(checkpoint),
        "--variant",
        variant,
        "--threads",
        str(torch_threads),
    ]
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ), check=False
        )
    except subprocess.TimeoutExpired:
        return timeout_s, f"a fresh replica was not ready after {timeout_s:.0f} s"
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return elapsed, f"a fresh process could not load it: {tail}"
    return elapsed, ""


def choose_variant(variants: list[VariantFigures]) -> str | None:
    """The fastest variant at batch 1 among those that passed the checks and load quickly enough."""
    candidates = [entry for entry in variants if entry.status == "passed" and entry.latency_batch1_ms is not None]
    if not candidates:
        return None
    best = min(candidates, key=lambda entry: entry.latency_batch1_ms)
    best.status = "chosen"
    return best.name
