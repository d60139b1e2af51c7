"""Everything an exact continuation needs: RNG states per rank, optimizer and schedule, the epoch's
checkpoint, and resuming from one (refusing a checkpoint of another model or data set).

    write_checkpoint(directory, run, config, data, metrics, rng_by_rank)
    resume_from(load_checkpoint(directory, with_training_state=True), run, config, rank)
"""

from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrm_platform.checkpoint import CheckpointError, LoadedCheckpoint, save_checkpoint
from hrm_platform.config import PlatformConfig
from hrm_platform.model.hrm import unwrap_model
from hrm_platform.training.data_source import DescribesData
from hrm_platform.training.state import TrainingRun


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples all the way down; a checkpoint may have turned them into lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def training_state(run: TrainingRun, rng_by_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything beyond the weights that an exact continuation needs."""
    state: dict[str, Any] = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": run.epoch,
        "step": run.step,
        "rng_by_rank": rng_by_rank,
    }
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    return state


def restore_training_state(
    run: TrainingRun, state: dict[str, Any], history: list[dict[str, Any]], rank: int, seed: int
) -> None:
    """Continue after epoch state["epoch"]; a rank the checkpoint has no RNG state for reseeds from
    (seed, rank, epoch)."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    run.history = list(history)
    rng_by_rank = state.get("rng_by_rank", [])
    if rank < len(rng_by_rank):
        restore_rng_state(rng_by_rank[rank])
    else:
        seed_rank(seed, rank, run.epoch)


def seed_rank(seed: int, rank: int, epoch: int = 0) -> None:
    """Distinct, reproducible RNG streams per rank (ACT exploration draws differ between ranks)."""
    mixed = int.from_bytes(hashlib.sha256(f"{seed}/{rank}/{epoch}".encode()).digest()[:4], "little")
    torch.manual_seed(mixed)
    random.seed(mixed)
    np.random.seed(mixed)


def parameter_fingerprint(model: nn.Module) -> str:
    """sha256 prefix of every parameter's bytes: equal on two ranks iff their weights are bit-identical."""
    digest = hashlib.sha256()
    for name, parameter in unwrap_model(model).named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]




def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def write_checkpoint(
    directory: Path, run: TrainingRun, config: PlatformConfig, data: DescribesData,
    metrics: dict[str, Any], rng_by_rank: list[dict[str, Any]],
) -> Path:
    """The checkpoint of the epoch just finished (weights of the unwrapped HRM, never DDP's `module.` keys, and
    their moving average with train.ema_decay), with the feature spec and the description of the data it was
    trained on (bar frequency included)."""
    return save_checkpoint(
        directory,
        model_state=run.hrm.state_dict(),
        config=config,
        feature_spec=data.feature_spec,
        data_description=data.description(),
        epoch=run.epoch,
        metrics=metrics,
        training_state=training_state(run, rng_by_rank),
        ema_state=run.ema.state_dict() if run.ema is not None else None,
        history=run.history,
    )


def resume_from(
    loaded: LoadedCheckpoint, run: TrainingRun, config: PlatformConfig, rank: int, steps_per_epoch: int | None = None
) -> None:
    """Continue `run` after the checkpoint's epoch; refuses a checkpoint of another model or data set.
    `steps_per_epoch` (at this run's world size) realigns the schedule after an elastic resize.

    With train.ema_decay the average continues from the checkpoint's, or, for a checkpoint saved without
    one (the setting was turned on between runs), starts again at the resumed weights.
    """
    for section in ("model", "data"):
        saved, current = getattr(loaded.config, section), getattr(config, section)
        if saved != current:
            changed = sorted(k for k in type(current).model_fields if getattr(saved, k) != getattr(current, k))
            raise CheckpointError(
                f"cannot resume from {loaded.directory}: its {section} config differs in {changed}; "
                f"start a new run (another train.name) or restore those {section}.* values"
            )
    run.hrm.load_state_dict(loaded.model_state, strict=True)
    if run.ema is not None and loaded.ema_state is not None:
        run.ema.load_state_dict(loaded.ema_state)
    elif run.ema is not None:
        run.ema.restart_from(run.hrm)
    restore_training_state(
        run, loaded.training_state, loaded.manifest["metrics"]["history"], rank=rank, seed=config.train.seed
    )
    if steps_per_epoch is not None:
        realign_schedule(run, steps_per_epoch)


def realign_schedule(run: TrainingRun, steps_per_epoch: int) -> None:
    """Continue the learning-rate schedule from the same share of training after a resize.

    An elastic run (train.num_workers [min, max]) resumes at another world size, so with other steps per
    epoch: the saved step counts the old size's steps against a total at the new size, and the schedule would
    jump (measured: from 1 to 2 workers after epoch 1 of 4, a factor 0.58 instead of 0.90). At an epoch
    boundary the step becomes epochs done x steps per epoch at the new size; at the same size nothing changes.
    """
    aligned = run.epoch * steps_per_epoch
    if aligned == run.step:
        return
    run.step = aligned
    run.scheduler.last_epoch = aligned - 1
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": a resume, not a skipped step
        warnings.simplefilter("ignore", UserWarning)
        run.scheduler.step()  # last_epoch -> aligned, and every group's lr for that step
