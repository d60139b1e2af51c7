"""The validation pass: ACT inference as served, on this rank's share of the validation split, reduced."""

from __future__ import annotations

import contextlib

import torch

from hrm_platform.config import PlatformConfig
from hrm_platform.model.act import predict
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import TrainingData
from hrm_platform.training.state import TrainingRun

VALIDATION_BATCH_FACTOR = 4  # validation runs without gradients: larger batches fit


def validate(run: TrainingRun, data: TrainingData, config: PlatformConfig, collective: Collective) -> dict[str, float]:
    """ACT inference (per-sample halting, as served) on this rank's share of the validation split, reduced.

    Runs `run.inference_model`: the weights' moving average when train.ema_decay is set, as served.
    """
    hrm = run.inference_model
    was_training = hrm.training
    hrm.eval()
    batch_size = config.train.batch_size * VALIDATION_BATCH_FACTOR
    totals = torch.zeros(4, dtype=torch.float64)  # correct, nll, segments, samples
    autocast = (
        torch.autocast(run.device.type, dtype=run.autocast_dtype) if run.autocast_dtype else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        for windows, actions, _ in data.val_batches(batch_size):
            windows, actions = windows.to(run.device), actions.to(run.device)
            result = predict(hrm, windows)
            chosen = result.probabilities.gather(1, actions[:, None])[:, 0].clamp_min(1e-12)  # (B,)
            totals += torch.tensor([
                float((result.probabilities.argmax(dim=-1) == actions).sum()),
                float(-chosen.log().sum()),
                float(result.segments_used.sum()),
                float(actions.shape[0]),
            ], dtype=torch.float64)
    hrm.train(was_training)  # the average stays in eval mode; the trained HRM goes back to training
    correct, nll, segments, samples = collective.sum(totals).tolist()
    if samples == 0:
        return {"val_accuracy": float("nan"), "val_loss": float("nan"), "val_mean_segments": float("nan")}
    return {"val_accuracy": correct / samples, "val_loss": nll / samples, "val_mean_segments": segments / samples}


def should_validate(epoch: int, config: PlatformConfig) -> bool:
    """Every validation_frequency epochs, and always at the last epoch."""
    return epoch % config.train.validation_frequency == 0 or epoch == config.train.epochs
