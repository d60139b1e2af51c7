"""Export: build every engine variant once, measure and check it, choose what replicas serve.

    hrm export --checkpoint runs/demo/epoch_0002
    ray job submit --working-dir . -- python -m jobs.export --checkpoint runs/demo/epoch_0002

For each variant (serving/variants.py) export builds it and writes its artefacts, then, side by side in one
process with `serve.torch_threads` threads:
- latency of `engine.run` at batch 1 and batch 32 (median of round-robin repeats, fixed M segments so every
  variant does the same work), and the ratio to eager fp32;
- agreement with eager fp32 on >= 256 held-out windows (the test split, built with the checkpoint's feature
  statistics), as served (ACT halting on): share of equal actions, and the largest probability difference
  with halting off at M segments (numerical fidelity; with halting on, a sample whose q_halt and q_continue
  are nearly tied may stop one segment earlier in either engine, which the agreement figure already covers);
- replica-ready time: a fresh process that imports the engine, verifies the checkpoint and the artefacts,
  loads the variant and warms up.
A variant passes with agreement >= 99 % and probability difference <= 0.05; it is servable when a fresh
replica is ready in <= 15 s, or, on a machine so loaded that eager fp32 itself starts slowly, in <= 2x
eager's start measured beside it (a variant that compiles at start fails either way). The fastest passing,
servable variant at batch 1 is chosen. Everything goes into
`<checkpoint>/serving/serving_manifest.json`, with the sha256 of every artefact.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hrm_platform.checkpoint import LoadedCheckpoint, file_sha256, load_model
from hrm_platform.config import ExportConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.model.hrm import HRM
from hrm_platform.serving.engine import InferenceEngine, example_segment_inputs, synchronize
from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir, write_serving_manifest
from hrm_platform.serving.variants import (
    VARIANTS,
    build_act_runner,
    build_segment,
    engine_model,
    variant_info,
    variants_for_device,
)

logger = logging.getLogger(__name__)



ExportSettings = ExportConfig  # the `export` section of the config (its defaults live in config.py)


MIN_EVAL_WINDOWS = 256


@dataclass
class VariantFigures:
    name: str
    description: str
    status: str = "pending"  # chosen | passed | failed | not servable | unavailable
    reason: str = ""
    build_s: float | None = None
    latency_batch1_ms: float | None = None
    latency_batch32_ms: float | None = None
    speedup_batch1: float | None = None
    speedup_batch32: float | None = None
    segment_ms: float | None = None
    fixed_ms: float | None = None
    agreement: float | None = None
    max_probability_diff: float | None = None
    max_probability_diff_served: float | None = None
    segments_agreement: float | None = None
    ready_s: float | None = None
    artefacts: dict[str, str] = field(default_factory=dict)

    @property
    def passed_checks(self) -> bool:
        return self.status in ("passed", "chosen", "not servable")


@dataclass
class ExportReport:
    checkpoint: Path
    model_version: str
    chosen: str | None
    variants: list[VariantFigures]
    eval_windows: int
    torch_threads: int
    settings: ExportSettings
    manifest_path: Path

    def figures(self, name: str) -> VariantFigures:
        return next(figures for figures in self.variants if figures.name == name)

    @property
    def chosen_variant(self) -> str:
        """What replicas serve: the chosen variant, or eager when none passed."""
        return self.chosen or "eager"

    @property
    def speedup_batch1(self) -> float:
        """The served variant's batch-1 speed-up over eager fp32 (1.0 when none was chosen)."""
        return self.figures(self.chosen).speedup_batch1 if self.chosen else 1.0

    def summary(self) -> str:
        header = (
            f"export of {self.checkpoint} (model {self.model_version}, torch {torch.__version__}, "
            f"{self.torch_threads} thread(s), {self.eval_windows} held-out windows)"
        )
        columns = ("variant", "status", "b1 ms", "x eager", "b32 ms", "x eager", "seg ms", "agree", "max dp", "ready s")
        rows = [columns] + [_summary_row(figures) for figures in self.variants]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        lines = [header] + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines += [f"  {figures.name}: {figures.reason}" for figures in self.variants if figures.reason]
        lines.append(self._choice_line())
        lines.append(f"manifest: {self.manifest_path}")
        return "\n".join(lines)

    def _choice_line(self) -> str:
        if self.chosen is None:
            return "chosen: none (no variant passed); replicas serve eager fp32"
        chosen = self.figures(self.chosen)
        return (
            f"chosen: {self.chosen}: {chosen.speedup_batch1:.2f}x eager fp32 at batch 1, "
            f"{chosen.agreement:.1%} action agreement, per-segment {chosen.segment_ms:.2f} ms"
        )


def export_engine(
    checkpoint: str | Path,
    variants: Sequence[str] | None = None,
    settings: ExportSettings | None = None,
) -> ExportReport:
    """Build, measure and check engine variants of a checkpoint; write the serving manifest + artefacts.

    variants None = every variant that runs on this machine (the GPU ones too with CUDA) except those that
    compile at replica start (`Variant.explicit_only`); `eager int8 jit_int8` export in seconds.
    """
    checkpoint = Path(checkpoint).absolute()
    hrm, loaded = load_model(checkpoint)
    settings = settings or loaded.config.export
    torch_threads = loaded.config.serve.torch_threads
    torch.set_num_threads(torch_threads)
    names = _variant_names(variants)
    windows = held_out_windows(loaded, settings.eval_windows)  # (N, W, F)
    staging = checkpoint / f".serving.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        figures, engines = _build_all(hrm, loaded, names, staging)
        _measure_latency(engines, figures, windows, settings)
        _check_agreement(engines, figures, windows, settings, batch_size=loaded.config.serve.max_batch_size)
        target = _move_into_place(staging, serving_dir(checkpoint))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report = ExportReport(
        checkpoint,
        loaded.model_version,
        None,
        figures,
        windows.shape[0],
        torch_threads,
        settings,
        target / SERVING_MANIFEST,
    )
    _write_manifest(report)  # chosen=None while ready times are measured: a crash leaves eager
    _measure_ready(report, settings)
    report.chosen = choose_variant(report.variants)
    _write_manifest(report)
    return report


# --------------------------------------------------------------------------------------------- building


def _variant_names(variants: Sequence[str] | None) -> list[str]:
    if variants:
        for name in variants:
            variant_info(name)  # unknown names fail here, with the list of known ones
        names = list(dict.fromkeys(variants))
    else:
        names = variants_for_device("cpu") + (variants_for_device("cuda") if torch.cuda.is_available() else [])
        names = [name for name in dict.fromkeys(names) if not VARIANTS[name].explicit_only]
    return ["eager"] + [name for name in names if name != "eager"]  # eager fp32 is the reference


def _build_all(
    hrm: HRM, loaded: LoadedCheckpoint, names: list[str], staging: Path
) -> tuple[list[VariantFigures], dict[str, InferenceEngine]]:
    figures, engines = [], {}
    for name in names:
        info = variant_info(name)
        entry = VariantFigures(name, info.description)
        figures.append(entry)
        started = time.perf_counter()
        try:
            engines[name] = _build_engine(hrm, loaded, name, staging)
        except Exception as error:  # noqa: BLE001 - torch raises many types; such a variant is reported, never chosen
            entry.status, entry.reason = "unavailable", _first_line(error)
            logger.warning("engine variant %s unavailable: %s", name, entry.reason)
            continue
        entry.build_s = time.perf_counter() - started
        entry.artefacts = {file: file_sha256(staging / file) for file in info.artefacts}
        latency = engines[name].warm_up()
        entry.segment_ms, entry.fixed_ms = latency.segment_ms, latency.fixed_ms
    if "eager" not in engines:
        raise RuntimeError(f"the eager fp32 reference could not be built: {figures[0].reason}")
    return figures, engines


def _build_engine(hrm: HRM, loaded: LoadedCheckpoint, name: str, staging: Path) -> InferenceEngine:
    device = variant_info(name).default_device
    model = engine_model(hrm, name, device)
    example = example_segment_inputs(model, batch_size=2)
    segment_fn = build_segment(model, name, example, staging)  # what a replica loading the artefact runs
    runner = build_act_runner(model, name, segment_fn, loaded.config.serve.cuda_graph_buckets)
    return InferenceEngine(
        model, segment_fn, name, loaded.model_version, loaded.feature_spec, loaded.directory, device, runner
    )


def _move_into_place(staging: Path, target: Path) -> Path:
    if target.exists():
        retired = target.parent / f".serving.old-{uuid.uuid4().hex[:8]}"
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)
    return target


# ------------------------------------------------------------------------------------------ measurements


def held_out_windows(loaded: LoadedCheckpoint, count: int) -> Tensor:
    """(N, W, F) windows spread over the test split (val added when test is short), checkpoint's stats."""
    bundle = build_datasets(loaded.config.data, feature_stats=loaded.feature_spec.stats)
    parts = []
    remaining = max(count, MIN_EVAL_WINDOWS)
    for split in (bundle.test, bundle.val):
        if remaining <= 0 or len(split) == 0:
            continue
        take = min(remaining, len(split))
        positions = np.unique(np.linspace(0, len(split) - 1, take).round().astype(np.int64))
        parts.append(split.batch(positions)[0])
        remaining -= positions.shape[0]
    windows = torch.cat(parts)
    if windows.shape[0] < MIN_EVAL_WINDOWS:
        raise RuntimeError(
            f"only {windows.shape[0]} held-out windows (test + val); the agreement check needs {MIN_EVAL_WINDOWS}"
        )
    return windows


def _measure_latency(
    engines: dict[str, InferenceEngine], figures: list[VariantFigures], windows: Tensor, settings: ExportSettings
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
    engines: dict[str, InferenceEngine], windows: Tensor, settings: ExportSettings, batch_size: int
) -> list[VariantFigures]:
    """Latency (batch 1 and 32) and agreement with engines["eager"] of engines built elsewhere (the GPU
    check builds its fp32 reference on the GPU): export's measurements without building or writing."""
    figures = [VariantFigures(name, variant_info(name).description) for name in engines]
    _measure_latency(engines, figures, windows, settings)
    _check_agreement(engines, figures, windows, settings, batch_size)
    return figures


def _check_agreement(
    engines: dict[str, InferenceEngine],
    figures: list[VariantFigures],
    windows: Tensor,
    settings: ExportSettings,
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


def _judge(entry: VariantFigures, settings: ExportSettings) -> tuple[str, str]:
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


def _measure_ready(report: ExportReport, settings: ExportSettings) -> None:
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
        entry.ready_s, problem = time_fresh_load(report.checkpoint, entry.name, report.torch_threads, 120.0)
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


# -------------------------------------------------------------------------------------------- manifest


def _write_manifest(report: ExportReport) -> Path:
    chosen = report.figures(report.chosen) if report.chosen else None
    content = {
        "torch_threads": report.torch_threads,
        "segment_ms": chosen.segment_ms if chosen else None,
        "fixed_ms": chosen.fixed_ms if chosen else None,
        "eval_windows": report.eval_windows,
        "settings": report.settings.model_dump(mode="json"),
        "variants": {entry.name: asdict(entry) for entry in report.variants},
        "files": {name: sha for entry in report.variants for name, sha in entry.artefacts.items()},
    }
    return write_serving_manifest(report.manifest_path, report.model_version, report.chosen, content)


# ---------------------------------------------------------------------------------------------- helpers


def _summary_row(entry: VariantFigures) -> tuple[str, ...]:
    def number(value: float | None, pattern: str) -> str:
        return "-" if value is None else format(value, pattern)

    return (
        entry.name,
        entry.status,
        number(entry.latency_batch1_ms, ".2f"),
        number(entry.speedup_batch1, ".2f"),
        number(entry.latency_batch32_ms, ".1f"),
        number(entry.speedup_batch32, ".2f"),
        number(entry.segment_ms, ".2f"),
        "-" if entry.agreement is None else f"{entry.agreement:.1%}",
        number(entry.max_probability_diff, ".4f"),
        number(entry.ready_s, ".1f"),
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
