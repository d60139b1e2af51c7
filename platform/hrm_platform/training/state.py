"""What a training run advances (`TrainingRun`) and how it is built: model, optimizer, schedule, precision,
and the compiled module deep supervision calls per segment (`train.compile`).

    run = new_training_run(build_model(config, n_features).to(device), config, device, steps_per_epoch)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hrm_platform.config import PlatformConfig, TrainConfig
from hrm_platform.model.hrm import HRM, unwrap_model
from hrm_platform.training.ema import WeightAverage, new_weight_average

MIN_LR_FACTOR = 0.1  # the cosine schedule decays to 10% of train.lr


@dataclass
class TrainingRun:
    """What one training run advances; `epoch` counts completed epochs, `step` completed batches."""

    model: nn.Module  # the HRM, or its DDP wrapper
    step_model: nn.Module  # what deep supervision calls per segment: `model`, or torch.compile of it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None
    device: torch.device
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    first_step_unix: float | None = None  # wall clock of this process's first finished batch
    ema: WeightAverage | None = None  # the weights' moving average (train.ema_decay), updated per batch

    @property
    def hrm(self) -> HRM:
        return unwrap_model(self.model)

    @property
    def inference_model(self) -> HRM:
        """What validation runs and a checkpoint serves: the averaged HRM with train.ema_decay, else the HRM."""
        return self.ema.model if self.ema is not None else self.hrm


def build_model(config: PlatformConfig, n_features: int) -> HRM:
    """The HRM with weights from train.seed: identical on every rank before DDP's broadcast."""
    with _seeded(config.train.seed):
        return HRM(config.model, n_features=n_features, window=config.data.window)


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (not on biases, norm gains or the summary token).

    On CUDA the fused implementation: one kernel per step instead of a dozen per parameter group, which
    matters here because deep supervision steps the optimizer once per segment.
    """
    decayed, plain = [], []
    for name, parameter in unwrap_model(model).named_parameters():
        if parameter.requires_grad:
            is_matrix = parameter.ndim >= 2 and "summary_token" not in name
            (decayed if is_matrix else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": train.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    on_cuda = all(parameter.is_cuda for parameter in decayed + plain)
    return torch.optim.AdamW(groups, lr=train.lr, fused=on_cuda or None)


def compiled_for_training(model: nn.Module, train: TrainConfig) -> nn.Module:
    """The module deep supervision calls per segment: with train.compile, torch.compile of it (Inductor fuses
    the segment's forward and its backward; it shares the parameters, so the optimizer, DDP and checkpoints
    see the same weights); else the module itself. Validation and serving keep the eager HRM."""
    return torch.compile(model, mode=train.compile_mode) if train.compile else model


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then cosine down to MIN_LR_FACTOR at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return MIN_LR_FACTOR + (1.0 - MIN_LR_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
    total_steps = steps_per_epoch * train.epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train.warmup_steps, total_steps)
    )


def precision_settings(
    train: TrainConfig, device: torch.device
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and grad scaler: fp32 none; bf16 autocast (CPU or GPU); fp16 autocast + scaler (GPU)."""
    if train.precision == "bf16":
        return torch.bfloat16, None
    if train.precision == "fp16":
        return torch.float16, torch.amp.GradScaler(device.type)
    return None, None


def new_training_run(
    model: nn.Module, config: PlatformConfig, device: torch.device, steps_per_epoch: int
) -> TrainingRun:
    optimizer = build_optimizer(model, config.train)
    autocast_dtype, scaler = precision_settings(config.train, device)
    return TrainingRun(
        model=model,
        step_model=compiled_for_training(model, config.train),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config.train, steps_per_epoch),
        scaler=scaler,
        autocast_dtype=autocast_dtype,
        device=device,
        ema=new_weight_average(unwrap_model(model), config.train.ema_decay),
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch seed without disturbing the caller's RNG stream."""
    saved = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved)
