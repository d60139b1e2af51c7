"""Deep-supervision losses of a few fixed batches: how the eager and compiled training steps are compared."""

from __future__ import annotations

import torch

from hrm_platform.config import PlatformConfig
from hrm_platform.model.act import deep_supervision_step
from hrm_platform.training.state import build_model, new_training_run

N_FEATURES = 11


def step_losses(config: PlatformConfig, device: str = "cpu", steps: int = 3) -> list[list[float]]:
    """Per step, the per-segment losses of `steps` steps on the same random batches (seeded exploration)."""
    target = torch.device(device)
    model = build_model(config, N_FEATURES).to(target)
    run = new_training_run(model, config, target, steps_per_epoch=10)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same exploration draws in every run
        windows = torch.randn(16, config.data.window, N_FEATURES, generator=generator)
        actions = torch.randint(0, 3, (16,), generator=generator)
        quantities = torch.rand(16, generator=generator)
        metrics = deep_supervision_step(
            run.step_model, windows.to(target), actions.to(target), quantities.to(target), run.optimizer,
            max_segments=config.model.max_segments, halt_exploration=config.model.halt_exploration,
            quantity_loss_weight=1.0, q_loss_weight=0.5, grad_clip=1.0,
        )
        losses.append(metrics.loss)
    return losses
