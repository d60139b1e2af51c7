"""The HRM learns the synthetic market: a fixed-seed, fixed-batch run beats the majority class by a margin."""

from __future__ import annotations

import math

import numpy as np
import torch

from hrm_platform.config import DataConfig, ModelConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.model.act import deep_supervision_step, predict
from hrm_platform.model.hrm import HRM

# The calibrated default market (oracle IC ~0.12) is too hard for 60 batches; strength 20 restores the trend and
# mean reversion the test was written for.
DATA = DataConfig(n_instruments=4, n_bars=2500, window=16, horizon=8, seed=7, signal_strength=20.0)
MODEL = ModelConfig(d_model=32, n_heads=2, h_layers=1, l_layers=1, h_cycles=1, l_cycles=2, max_segments=3)
BATCHES = 60  # ~10 s on one idle core
BATCH_SIZE = 64
LR = 2e-3
# Torch/numpy seeds 0, 1, 2 reach 0.453, 0.466, 0.459 against a majority class of 0.358; a model that ignores
# its input cannot beat the majority fraction at all.
MARGIN = 0.06


def lr_factor(step: int) -> float:
    """Warm-up over 10 batches, cosine to 10% at the end: the last model is not caught mid-oscillation."""
    return min(1.0, (step + 1) / 10) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / BATCHES)))


def test_small_hrm_beats_the_majority_class_on_validation():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bundle = build_datasets(DATA)
    model = HRM(MODEL, n_features=bundle.train.n_features, window=DATA.window)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order = np.random.default_rng(0).permutation(len(bundle.train))
    first_losses, last_losses = [], []
    for batch in range(BATCHES):
        windows, actions, quantities = bundle.train.batch(order[batch * BATCH_SIZE : (batch + 1) * BATCH_SIZE])
        metrics = deep_supervision_step(
            model, windows, actions, quantities, optimizer, max_segments=MODEL.max_segments,
            halt_exploration=MODEL.halt_exploration, quantity_loss_weight=1.0, q_loss_weight=0.5, grad_clip=1.0,
        )
        schedule.step()
        (first_losses if batch < 10 else last_losses).append(metrics.loss[0])

    model.eval()
    windows, actions, _ = bundle.val.batch(np.arange(len(bundle.val)))
    result = predict(model, windows, use_halting=False)
    accuracy = float((result.probabilities.argmax(-1) == actions).float().mean())
    majority = bundle.majority_fraction("val")
    assert accuracy > majority + MARGIN, f"val accuracy {accuracy:.3f} vs majority class {majority:.3f}"
    assert np.mean(last_losses[-10:]) < np.mean(first_losses)
