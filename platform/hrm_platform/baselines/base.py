"""The contract every trained baseline meets, and the one entry point that fits one by name.

A baseline sees exactly what the HRM sees: windows (N, W, F) of normalised features from a `WindowDataset`,
labelled with an action in {hold, buy, sell} and a quantity in [0, 1]. It answers like `act.predict`:
action probabilities (N, 3) and a quantity (N,).

A fitted baseline holds only picklable values (numpy arrays, LightGBM boosters, CPU torch modules), so a
Ray task may return it; fitting is deterministic in `seed` on CPU.

    baseline = fit_baseline("mlp", bundle.train, bundle.val, config.model, config.baselines, seed=0)
    windows, actions, _ = bundle.test.batch(np.arange(len(bundle.test)))
    outputs = baseline.predict(windows.numpy())          # probabilities (N, 3), quantity (N,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hrm_platform.actions import N_ACTIONS
from hrm_platform.config import BASELINE_NAMES, BaselineConfig, ModelConfig
from hrm_platform.data.dataset import WindowDataset


@dataclass
class BaselineOutputs:
    """probabilities (N, 3) float32 rows summing to 1, in ACTIONS order; quantity (N,) float32 in [0, 1]."""

    probabilities: np.ndarray
    quantity: np.ndarray

    @property
    def actions(self) -> np.ndarray:
        """(N,) int64 the most probable action per window."""
        return self.probabilities.argmax(axis=1).astype(np.int64)


class BaselineModel(Protocol):
    """A fitted baseline: `predict` takes raw windows (N, W, F) float32, the HRM's input."""

    name: str

    def predict(self, windows: np.ndarray) -> BaselineOutputs: ...


def fit_baseline(
    name: str,
    train: WindowDataset,
    val: WindowDataset,
    model_config: ModelConfig,
    config: BaselineConfig,
    seed: int,
    *,
    device: str = "cpu",
) -> BaselineModel:
    """Fit baseline `name` on train, choosing its stopping point on val; `device` places the torch ones
    (the fitted model always comes back on CPU). `model_config` sizes the transformer like the HRM."""
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINE_NAMES)}")
    # Imported here, not at the top: each fitter imports this module for the contract, and a caller that
    # names one baseline should not load the others' libraries.
    if name == "lightgbm":
        from hrm_platform.baselines.gradient_boosting import fit_lightgbm

        return fit_lightgbm(train, val, config, seed)
    if name == "mlp":
        from hrm_platform.baselines.mlp import fit_mlp

        return fit_mlp(train, val, config, seed, device)
    from hrm_platform.baselines.transformer import fit_transformer

    return fit_transformer(train, val, model_config, config, seed, device)


def train_positions(train: WindowDataset, max_samples: int | None, seed: int) -> np.ndarray:
    """(n,) int64 sorted positions of the train windows to fit on: all, or a seeded subsample of max_samples."""
    n_windows = len(train)
    if max_samples is None or max_samples >= n_windows:
        return np.arange(n_windows, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n_windows, size=max_samples, replace=False)
    return np.sort(chosen).astype(np.int64)


def check_windows(windows: np.ndarray, window: int, n_features: int) -> np.ndarray:
    """windows as (N, W, F) float32, or a ValueError naming the shape the baseline was fitted on."""
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 3 or windows.shape[1:] != (window, n_features):
        raise ValueError(
            f"windows of shape {windows.shape} do not fit the baseline (expects (N, {window}, {n_features}))"
        )
    return windows


def normalised_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """(N, 3) float32 rows summing to 1 (float32 rounding of a float64 or softmax row can leave 1 +- 1e-7)."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, N_ACTIONS)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)
