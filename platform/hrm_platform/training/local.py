"""Training in one process without Ray: the same epoch and step functions as the Ray Train loop.

Used by test fixtures (a real checkpoint in seconds) and as the plain-PyTorch baseline of
`benchmarks/train_throughput.py`. Like the Ray run, it resumes: called again with the same `out_dir` it
continues after the latest checkpoint there.

    from hrm_platform.training.local import train_local
    best = train_local(load_config("jobs/configs/smoke.yaml"), Path("runs/local-smoke"))
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hrm_platform.config import PlatformConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.training.checkpoint import load_checkpoint, load_manifest
from hrm_platform.training.epoch import (
    Collective,
    batches_per_epoch,
    build_model,
    capture_rng_state,
    checkpoint_name,
    format_progress,
    make_sampler,
    new_training_run,
    parameter_fingerprint,
    resume_from,
    seed_rank,
    should_validate,
    train_epoch,
    validate,
    write_checkpoint,
)

ProgressFn = Callable[[str], None]  # receives one formatted line per epoch, e.g. `print`


def train_local(config: PlatformConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> Path:
    """Train `config` in this process; checkpoints go to out_dir/epoch_NNNN; returns the best one's path.

    `progress(line)` gets the same per-epoch line the Ray run prints (e.g. `progress=print`); every epoch's
    metrics are in the checkpoints' manifests. The best checkpoint is the one with the highest validation accuracy; like Ray Train's
    CheckpointConfig, only the best `train.keep_checkpoints` and the latest are kept.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.train.torch_threads)
    device = _device(config)
    collective = Collective(device=device)
    bundle = build_datasets(config.data)
    model = build_model(config, bundle.train.n_features).to(device)
    sampler = make_sampler(bundle.train, collective, config.train.seed)
    steps_per_epoch = batches_per_epoch(len(sampler), config.train.batch_size, config.train.max_train_batches)
    run = new_training_run(model, config, device, steps_per_epoch)
    seed_rank(config.train.seed, rank=0)
    latest = latest_checkpoint(out_dir)
    if latest is not None:
        resume_from(load_checkpoint(latest, with_training_state=True), run, config, rank=0)
    resumed_after = run.epoch
    started = time.perf_counter()
    for _ in range(run.epoch, config.train.epochs):
        metrics = train_epoch(run, bundle.train, sampler, config, collective)
        if should_validate(run.epoch, config):
            metrics.update(validate(run, bundle.val, config, collective))
        metrics["param_fingerprints"] = [parameter_fingerprint(run.model)]
        metrics["resumed_after_epoch"] = resumed_after
        metrics["first_step_unix"] = run.first_step_unix
        run.history.append(metrics)
        write_checkpoint(out_dir / checkpoint_name(run.epoch), run, config, bundle.feature_spec, metrics, [capture_rng_state()])
        _prune(out_dir, config.train.keep_checkpoints)
        if progress is not None:
            seconds_per_epoch = (time.perf_counter() - started) / (run.epoch - resumed_after)
            progress(format_progress(metrics, config.train.epochs, seconds_per_epoch))
    return best_checkpoint(out_dir)


def _device(config: PlatformConfig) -> torch.device:
    if config.train.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (a manifest is written last), oldest epoch first."""
    return sorted(path for path in out_dir.glob("epoch_*") if (path / "manifest.json").is_file())


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = _checkpoints(out_dir)
    return found[-1] if found else None


def _validation_accuracy(checkpoint: Path) -> float:
    value = load_manifest(checkpoint)["metrics"]["latest"].get("val_accuracy")
    return value if value is not None and math.isfinite(value) else -math.inf


def best_checkpoint(out_dir: Path) -> Path:
    """Highest validation accuracy; the later epoch wins a tie."""
    found = _checkpoints(out_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint in {out_dir}")
    return max(found, key=lambda path: (_validation_accuracy(path), path.name))


def _prune(out_dir: Path, keep: int) -> None:
    found = _checkpoints(out_dir)
    ranked = sorted(found, key=lambda path: (_validation_accuracy(path), path.name), reverse=True)
    for path in ranked[keep:]:
        if path != found[-1]:
            shutil.rmtree(path)
