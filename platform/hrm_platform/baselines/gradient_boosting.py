"""LightGBM on the last bars of each window: the field's standard tabular baseline.

Inputs are the last `lightgbm_lags` feature rows of a window, flattened: (N, lags * F), oldest lag first.
Two boosters: a multiclass one for the action (its softmax is the probabilities) and an L2 regressor for
the quantity (clipped to [0, 1]), each stopped early on the val split's own loss.

The native `lightgbm.train` API is used (not LGBMClassifier / LGBMRegressor, which need scikit-learn, not
a dependency here); a `Booster` pickles through its model string.

    baseline = fit_lightgbm(bundle.train, bundle.val, BaselineConfig(), seed=0)
    baseline.predict(windows)        # windows (N, W, F) -> probabilities (N, 3), quantity (N,)
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm
import numpy as np

from hrm_platform.actions import N_ACTIONS
from hrm_platform.baselines.base import BaselineOutputs, check_windows, normalised_probabilities, train_positions
from hrm_platform.config import BaselineConfig
from hrm_platform.data.dataset import WindowDataset

GATHER_CHUNK = 4096  # windows gathered from a dataset at a time: (4096, W, F) float32 stays a few MB


@dataclass
class LightGBMBaseline:
    name: str
    action_model: lightgbm.Booster  # multiclass, N_ACTIONS softmax outputs
    quantity_model: lightgbm.Booster  # L2 regression
    lags: int
    window: int
    n_features: int
    threads: int

    def predict(self, windows: np.ndarray) -> BaselineOutputs:
        inputs = lagged_rows(check_windows(windows, self.window, self.n_features), self.lags)  # (N, lags*F)
        probabilities = self.action_model.predict(inputs, num_threads=self.threads)  # (N, 3) float64
        quantity = np.clip(self.quantity_model.predict(inputs, num_threads=self.threads), 0.0, 1.0)  # (N,)
        return BaselineOutputs(normalised_probabilities(probabilities), quantity.astype(np.float32))


def fit_lightgbm(train: WindowDataset, val: WindowDataset, config: BaselineConfig, seed: int) -> LightGBMBaseline:
    lags = config.lightgbm_lags
    if lags > train.window:
        raise ValueError(f"baselines.lightgbm_lags={lags} exceeds the window of {train.window} bars")
    positions = train_positions(train, config.max_train_samples, seed)
    train_inputs, train_actions, train_quantities = lagged_samples(train, positions, lags)
    val_inputs, val_actions, val_quantities = lagged_samples(val, np.arange(len(val)), lags)
    shared = _booster_params(config, seed)
    action_model = _boost(
        {**shared, "objective": "multiclass", "num_class": N_ACTIONS},
        (train_inputs, train_actions),
        (val_inputs, val_actions),
        config,
    )
    quantity_model = _boost(
        {**shared, "objective": "regression"}, (train_inputs, train_quantities), (val_inputs, val_quantities), config
    )
    return LightGBMBaseline(
        "lightgbm", action_model, quantity_model, lags, train.window, train.n_features, config.threads
    )


def lagged_rows(windows: np.ndarray, lags: int) -> np.ndarray:
    """windows (N, W, F) -> (N, lags * F) float32: the last `lags` bars, oldest first, row-major."""
    return np.ascontiguousarray(windows[:, -lags:, :]).reshape(windows.shape[0], -1)


def lagged_samples(
    dataset: WindowDataset, positions: np.ndarray, lags: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs (n, lags * F) float32, actions (n,) int64, quantities (n,) float32 of the windows at positions.

    Gathered chunk by chunk, so the (n, W, F) windows never exist at once.
    """
    parts = []
    for start in range(0, positions.shape[0], GATHER_CHUNK):
        windows, actions, quantities = dataset.batch(positions[start : start + GATHER_CHUNK])
        parts.append((lagged_rows(windows.numpy(), lags), actions.numpy(), quantities.numpy()))
    if not parts:
        return np.zeros((0, lags * dataset.n_features), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    inputs, actions, quantities = (np.concatenate(columns) for columns in zip(*parts))
    return inputs, actions, quantities


def _booster_params(config: BaselineConfig, seed: int) -> dict:
    """What both boosters share: size, rate, threads, and the settings that make a fit reproducible."""
    return {
        "num_leaves": config.lightgbm_leaves,
        "learning_rate": config.lightgbm_learning_rate,
        "num_threads": config.threads,
        "seed": seed,
        "deterministic": True,  # with force_row_wise: the same trees for the same seed and thread count
        "force_row_wise": True,
        "verbose": -1,
    }


def _boost(
    params: dict, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], config: BaselineConfig
) -> lightgbm.Booster:
    """At most lightgbm_estimators rounds, stopped early on val's loss; with no val windows, all rounds."""
    train_set = lightgbm.Dataset(train[0], label=train[1], params={"verbose": -1})
    valid_sets, callbacks = [], []
    if val[0].shape[0]:
        valid_sets = [lightgbm.Dataset(val[0], label=val[1], reference=train_set, params={"verbose": -1})]
        callbacks = [lightgbm.early_stopping(config.lightgbm_early_stopping, verbose=False)]
    # Without keep_training_booster the returned booster is rebuilt from its model string, trees cut at the
    # best iteration: prediction and a pickled copy both use the early-stopped model.
    return lightgbm.train(
        params, train_set, num_boost_round=config.lightgbm_estimators, valid_sets=valid_sets, callbacks=callbacks
    )
