"""Training in one process without Ray: the same epoch loop (`training/fit.py`) as the Ray Train worker.

Used by test fixtures (a real checkpoint in seconds) and as the plain-PyTorch baseline of
`benchmarks/train_throughput.py`. Like the Ray run, it resumes: called again with the same `out_dir` it
continues after the latest checkpoint there.

    from hrm_platform.training.local import train_local
    best = train_local(load_config("jobs/configs/smoke.yaml"), Path("runs/local-smoke"))
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hrm_platform.checkpoint import MANIFEST_FILE, load_checkpoint, load_manifest
from hrm_platform.config import PlatformConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import InMemoryData
from hrm_platform.training.fit import ProgressFn, checkpoint_score, fit
from hrm_platform.training.resume import checkpoint_name, resume_from, seed_rank, write_checkpoint
from hrm_platform.training.state import build_model, new_training_run
from hrm_platform.training.tracking import open_trackers


def train_local(config: PlatformConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> Path:
    """Train `config` in this process; checkpoints go to out_dir/epoch_NNNN; returns the best one's path.

    `progress(line)` gets the same per-epoch line the Ray run prints (e.g. `progress=print`); every epoch's
    metrics are in the checkpoints' manifests. The best checkpoint is the one with the highest validation
    accuracy; like Ray Train's CheckpointConfig, only the best `train.keep_checkpoints` and the latest are kept.
    """
    if config.data.loader != "memory":
        raise ValueError("train_local trains in one process without Ray; data.loader=ray_data needs `hrm train`")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.train.torch_threads)
    device = _device(config)
    collective = Collective(device=device)
    data = InMemoryData(build_datasets(config.data), collective, config)
    model = build_model(config, data.n_features).to(device)
    run = new_training_run(model, config, device, data.steps_per_epoch())
    seed_rank(config.train.seed, rank=0)
    latest = latest_checkpoint(out_dir)
    if latest is not None:
        resume_from(load_checkpoint(latest, with_training_state=True), run, config, rank=0)

    def save_epoch(metrics: dict, rng_by_rank: list[dict]) -> None:
        write_checkpoint(out_dir / checkpoint_name(run.epoch), run, config, data, metrics, rng_by_rank)
        _prune(out_dir, config.train.keep_checkpoints)

    trackers = open_trackers(config, out_dir, rank=0)  # TensorBoard events in out_dir/tensorboard
    try:
        fit(run, data, config, collective, save_epoch, progress, trackers)
    finally:
        trackers.close()
    return best_checkpoint(out_dir)


def _device(config: PlatformConfig) -> torch.device:
    if config.train.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (a manifest is written last), oldest epoch first."""
    return sorted(path for path in out_dir.glob("epoch_*") if (path / MANIFEST_FILE).is_file())


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = _checkpoints(out_dir)
    return found[-1] if found else None


def _validation_accuracy(checkpoint: Path) -> float:
    return checkpoint_score(load_manifest(checkpoint)["metrics"]["latest"])


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
