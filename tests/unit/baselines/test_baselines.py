"""Trained baselines: each learns a planted rule well above the majority share, falls to chance when the
features no longer carry the labels, answers in the contract's shapes, is deterministic in its seed,
survives pickling, and (the transformer) matches the HRM's size."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch

from hrm_platform.actions import BUY, HOLD, N_ACTIONS, SELL
from hrm_platform.baselines.base import BaselineModel, BaselineOutputs, fit_baseline, train_positions
from hrm_platform.baselines.transformer import WindowTransformer
from hrm_platform.config import BASELINE_NAMES, BaselineConfig, ModelConfig
from hrm_platform.data.dataset import WindowDataset
from hrm_platform.model.hrm import HRM, count_parameters

N_INSTRUMENTS, N_BARS, N_FEATURES, WINDOW = 2, 3000, 13, 16
SIGNAL_FEATURE, THRESHOLD, LABEL_NOISE = 3, 0.5, 0.05
SPLIT_ENDS = {"train": (WINDOW - 1, 2000), "val": (2000 + WINDOW, 2500), "test": (2500 + WINDOW, 3000)}
MODEL = ModelConfig(d_model=32, n_heads=2, h_layers=1, l_layers=1)  # transformer size for the fits
FAST = BaselineConfig(
    lightgbm_estimators=60,
    lightgbm_learning_rate=0.2,
    lightgbm_early_stopping=10,
    mlp_hidden=32,
    epochs=4,
    batch_size=128,
    lr=5e-3,
    threads=1,
)
DEMO_MODEL = ModelConfig(d_model=48, n_heads=4, h_layers=1, l_layers=1, h_cycles=1, l_cycles=2, max_segments=3)


def planted_splits(seed: int, broken: bool = False) -> dict[str, WindowDataset]:
    """Features N(0, 1); the label of end bar t follows feature SIGNAL_FEATURE of bar t:
    buy above +THRESHOLD, sell below -THRESHOLD, hold between, with LABEL_NOISE of labels redrawn at random;
    quantity = clip(|signal| - THRESHOLD, 0, 1) for buy/sell, 0 for hold.
    `broken`: the same labels over fresh noise features, so nothing in a window predicts its label."""
    rng = np.random.default_rng(seed)
    features, actions, quantities = [], [], []
    for _ in range(N_INSTRUMENTS):
        rows = rng.standard_normal((N_BARS, N_FEATURES)).astype(np.float32)  # (T, F)
        signal = rows[:, SIGNAL_FEATURE]
        action = np.where(signal > THRESHOLD, BUY, np.where(signal < -THRESHOLD, SELL, HOLD)).astype(np.int64)
        noisy = rng.random(N_BARS) < LABEL_NOISE
        action[noisy] = rng.integers(0, N_ACTIONS, noisy.sum())
        quantity = np.where(action == HOLD, 0.0, np.clip(np.abs(signal) - THRESHOLD, 0.0, 1.0)).astype(np.float32)
        if broken:
            rows = rng.standard_normal((N_BARS, N_FEATURES)).astype(np.float32)
        features.append(rows)
        actions.append(action)
        quantities.append(quantity)
    return {
        name: WindowDataset(features, actions, quantities, _index(start, stop), WINDOW)
        for name, (start, stop) in SPLIT_ENDS.items()
    }


def _index(start: int, stop: int) -> np.ndarray:
    """(N, 2) (instrument, end bar) rows for end bars [start, stop) of every instrument."""
    ends = np.arange(start, stop)
    return np.concatenate([np.stack([np.full_like(ends, i), ends], axis=1) for i in range(N_INSTRUMENTS)])


def split_windows(dataset: WindowDataset) -> tuple[np.ndarray, np.ndarray]:
    """Every window of a split (N, W, F) float32 and its actions (N,) int64."""
    windows, actions, _ = dataset.batch(np.arange(len(dataset)))
    return windows.numpy(), actions.numpy()


def majority_share(dataset: WindowDataset) -> float:
    counts = dataset.action_counts()
    return float(counts.max() / counts.sum())


def fit(name: str, splits: dict[str, WindowDataset], seed: int = 0) -> BaselineModel:
    return fit_baseline(name, splits["train"], splits["val"], MODEL, FAST, seed)


@pytest.fixture(scope="module")
def planted() -> dict[str, WindowDataset]:
    return planted_splits(seed=11)


@pytest.fixture(scope="module")
def fitted(planted) -> dict[str, BaselineModel]:
    """Each baseline fitted once on the planted splits (seed 0), with its fit time."""
    results = {}
    for name in BASELINE_NAMES:
        start = time.perf_counter()
        results[name] = fit(name, planted)
        print(f"{name}: fit in {time.perf_counter() - start:.2f} s")
    return results


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_learns_the_planted_rule(name, planted, fitted) -> None:
    windows, actions = split_windows(planted["test"])
    accuracy = float((fitted[name].predict(windows).actions == actions).mean())
    majority = majority_share(planted["test"])
    print(f"{name}: planted test accuracy {accuracy:.3f}, majority {majority:.3f}")
    assert accuracy > majority + 0.2


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_falls_to_chance_when_features_carry_no_labels(name) -> None:
    broken = planted_splits(seed=11, broken=True)
    windows, actions = split_windows(broken["test"])
    accuracy = float((fit(name, broken).predict(windows).actions == actions).mean())
    majority = majority_share(broken["test"])
    print(f"{name}: broken test accuracy {accuracy:.3f}, majority {majority:.3f}")
    assert accuracy <= majority + 0.05
    assert accuracy >= 1 / N_ACTIONS - 0.05


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_outputs_meet_the_contract(name, planted, fitted) -> None:
    windows, _ = split_windows(planted["test"])
    outputs = fitted[name].predict(windows[:100])
    assert isinstance(outputs, BaselineOutputs)
    assert fitted[name].name == name
    assert outputs.probabilities.shape == (100, N_ACTIONS) and outputs.probabilities.dtype == np.float32
    assert outputs.quantity.shape == (100,) and outputs.quantity.dtype == np.float32
    np.testing.assert_allclose(outputs.probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert (outputs.probabilities >= 0).all()
    assert ((outputs.quantity >= 0) & (outputs.quantity <= 1)).all()
    with pytest.raises(ValueError, match="do not fit the baseline"):
        fitted[name].predict(windows[:4, 1:])


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_quantity_follows_the_planted_rule(name, planted, fitted) -> None:
    dataset = planted["test"]
    windows, _, quantities = dataset.batch(np.arange(len(dataset)))
    predicted = fitted[name].predict(windows.numpy()).quantity
    assert np.corrcoef(predicted, quantities.numpy())[0, 1] > 0.5


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_same_seed_same_predictions(name, planted, fitted) -> None:
    windows, _ = split_windows(planted["test"])
    threads_before = torch.get_num_threads()
    again = fit(name, planted).predict(windows)
    assert torch.get_num_threads() == threads_before  # the fit restored the caller's thread count
    first = fitted[name].predict(windows)
    np.testing.assert_allclose(again.probabilities, first.probabilities, atol=1e-6)
    np.testing.assert_allclose(again.quantity, first.quantity, atol=1e-6)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_survives_pickling(name, planted, fitted) -> None:
    windows, _ = split_windows(planted["test"])
    restored = pickle.loads(pickle.dumps(fitted[name]))
    original, copied = fitted[name].predict(windows), restored.predict(windows)
    np.testing.assert_array_equal(copied.probabilities, original.probabilities)
    np.testing.assert_array_equal(copied.quantity, original.quantity)


@pytest.mark.parametrize(("model_config", "window"), [(ModelConfig(), 64), (DEMO_MODEL, 32)], ids=["default", "demo"])
def test_transformer_has_about_the_hrms_parameter_count(model_config, window) -> None:
    hrm = count_parameters(HRM(model_config, N_FEATURES, window))
    transformer = count_parameters(WindowTransformer(model_config, N_FEATURES, window))
    print(f"parameters: HRM {hrm}, transformer {transformer}")
    assert 0.7 * hrm <= transformer <= 1.3 * hrm


def test_unknown_baseline_is_refused(planted) -> None:
    with pytest.raises(ValueError, match="unknown baseline 'xgboost'"):
        fit("xgboost", planted)


def test_train_subsample_is_seeded_and_sized(planted) -> None:
    first = train_positions(planted["train"], 500, seed=3)
    assert first.shape == (500,) and np.unique(first).shape == (500,)
    np.testing.assert_array_equal(first, train_positions(planted["train"], 500, seed=3))
    assert not np.array_equal(first, train_positions(planted["train"], 500, seed=4))
    np.testing.assert_array_equal(train_positions(planted["train"], None, seed=3), np.arange(len(planted["train"])))
