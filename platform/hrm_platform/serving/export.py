"""Export: build every engine variant once, measure and check it, choose what replicas serve.

    hrm export --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003
    ray job submit --working-dir . -- \\
        python -m jobs.export --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003

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
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from hrm_platform.checkpoint import LoadedCheckpoint, file_sha256, load_model
from hrm_platform.config import ExportConfig, with_overrides
from hrm_platform.model.hrm import HRM
from hrm_platform.serving.engine import InferenceEngine, example_segment_inputs
from hrm_platform.serving.export_checks import (
    check_agreement,
    choose_variant,
    compare_engines,
    held_out_windows,
    measure_latency,
    measure_ready,
)
from hrm_platform.serving.export_report import ExportReport, VariantFigures
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
__all__ = ["ExportReport", "ExportSettings", "VariantFigures", "compare_engines", "export_engine", "held_out_windows"]


def export_engine(
    checkpoint: str | Path,
    variants: Sequence[str] | None = None,
    settings: ExportSettings | None = None,
    overrides: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Build, measure and check engine variants of a checkpoint; write the serving manifest + artefacts.

    variants None = every variant that runs on this machine (the GPU ones too with CUDA) except those that
    compile at replica start (`Variant.explicit_only`); `eager int8 jit_int8` export in seconds. `progress`
    gets a line as each stage starts (the whole export takes tens of seconds).
    """
    stage = _stage_printer(progress)
    checkpoint = Path(checkpoint).absolute()
    hrm, loaded = load_model(checkpoint)
    if settings is None:
        source = f"{checkpoint} config with overrides"
        settings = with_overrides(loaded.config, list(overrides), source, ("export",), "export").export
    torch_threads = loaded.config.serve.torch_threads
    torch.set_num_threads(torch_threads)
    names = _variant_names(variants)
    windows = held_out_windows(loaded, settings.eval_windows, settings.min_eval_windows)  # (N, W, F)
    staging = checkpoint / f".serving.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        stage(f"building {len(names)} variants: {', '.join(names)}")
        figures, engines = _build_all(hrm, loaded, names, staging)
        stage(f"timing batch 1 ({settings.repeats_batch1} runs) and batch 32 ({settings.repeats_batch32}) per variant")
        measure_latency(engines, figures, windows, settings)
        stage(f"checking agreement with eager fp32 on {windows.shape[0]} held-out windows")
        check_agreement(engines, figures, windows, settings, batch_size=loaded.config.serve.max_batch_size)
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
    if settings.measure_ready:
        stage("timing a fresh replica's start for each passing variant")
    measure_ready(report, settings)
    report.chosen = choose_variant(report.variants)
    _write_manifest(report)
    return report




def _stage_printer(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """progress(line) with the seconds since the export started; a no-op without `progress`."""
    started = time.perf_counter()

    def stage(text: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - started:5.1f} s] {text} ...")

    return stage


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
