"""Datasets: lazy windows equal reference slices, splits never overlap, stats come from train only,
serving windows equal training windows, labels follow their definition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hrm_platform.config import DataConfig
from hrm_platform.data.dataset import (
    ACTIONS,
    BUY,
    HOLD,
    SELL,
    SPLITS,
    build_datasets,
    describe_datasets,
    fold_ranges,
    label_actions,
    split_ranges,
)
from hrm_platform.data.features import LOOKBACK, FeatureStats, compute_features, window_from_bars
from hrm_platform.data.ohlcv import BAR_COLUMNS

SMALL = DataConfig(n_instruments=2, n_bars=1500, window=16, horizon=4, seed=3)


@pytest.fixture(scope="module")
def bundle():
    return build_datasets(SMALL)


def _raw(bundle, instrument: int) -> np.ndarray:
    return bundle.bars[bundle.symbols[instrument]][list(BAR_COLUMNS)].to_numpy()  # (T, 5)


def test_items_have_the_contract_types(bundle) -> None:
    window, action, quantity = bundle.train[0]
    assert window.shape == (16, bundle.train.n_features) and window.dtype == torch.float32
    assert action.dtype == torch.int64 and action.shape == () and int(action) in (HOLD, BUY, SELL)
    assert quantity.dtype == torch.float32 and quantity.shape == ()
    assert bundle.train.index.dtype == np.int64 and bundle.train.index.shape[1] == 2
    assert bundle.train.window == 16 and bundle.feature_spec.bars_needed == 16 + LOOKBACK
    assert ACTIONS == ("hold", "buy", "sell")


def test_lazy_windows_equal_reference_slices(bundle) -> None:
    """Recompute each window the plain way: features of the whole history, normalise, slice."""
    stats = bundle.feature_spec.stats
    for split in SPLITS:
        dataset = bundle.split(split)
        for position in np.random.default_rng(0).choice(len(dataset), 25, replace=False):
            instrument, end = dataset.index[position]
            reference = stats.apply(compute_features(_raw(bundle, instrument)))[end - 15 : end + 1]
            window, action, _ = dataset[position]
            np.testing.assert_array_equal(window.numpy(), reference)
            assert np.isfinite(reference).all()
            close = _raw(bundle, instrument)[:, 3]
            forward = np.log(close[end + 4] / close[end])
            assert bundle.forward_log_return[bundle.symbols[instrument]][end] == pytest.approx(forward)


def test_batch_equals_single_items(bundle) -> None:
    positions = np.array([5, 0, len(bundle.val) - 1, 17])
    windows, actions, quantities = bundle.val.batch(positions)
    for row, position in enumerate(positions):
        window, action, quantity = bundle.val[position]
        assert torch.equal(windows[row], window) and actions[row] == action and quantities[row] == quantity


def test_windows_are_not_materialised(bundle) -> None:
    """Splits share one (T, F) array per instrument; no (N, W, F) copy exists."""
    assert all(bundle.train.features[i] is bundle.test.features[i] for i in range(2))
    stored = sum(rows.nbytes for rows in bundle.train.features)
    windows = len(bundle.train) * bundle.train.window * bundle.train.n_features * 4
    assert stored < windows / 4


def test_splits_do_not_overlap_in_windows_or_labels(bundle) -> None:
    embargo = SMALL.embargo_bars
    for instrument in range(2):
        ends = {split: bundle.split(split).index for split in SPLITS}
        ends = {split: index[index[:, 0] == instrument, 1] for split, index in ends.items()}
        for earlier, later in (("train", "val"), ("val", "test")):
            last_label_bar = ends[earlier].max() + SMALL.horizon
            first_window_bar = ends[later].min() - SMALL.window + 1
            assert first_window_bar - last_label_bar - 1 == embargo  # exactly `embargo` bars in between
        touched = {
            split: set(range(e.min() - SMALL.window + 1, e.max() + SMALL.horizon + 1)) for split, e in ends.items()
        }
        assert not touched["train"] & touched["val"] and not touched["val"] & touched["test"]
        assert not touched["train"] & touched["test"]
        all_ends = np.concatenate(list(ends.values()))
        assert len(np.unique(all_ends)) == len(all_ends)
        assert all_ends.min() - SMALL.window + 1 >= LOOKBACK  # every window row has full feature history
        assert all_ends.max() + SMALL.horizon <= SMALL.n_bars - 1  # every label exists


@pytest.mark.parametrize("embargo", [0, 5])
def test_explicit_embargo_still_separates_splits(embargo: int) -> None:
    ranges = split_ranges(n_bars=900, window=10, horizon=3, embargo=embargo, val_fraction=0.2, test_fraction=0.1)
    assert ranges["val"][0] - (ranges["train"][1] - 1) == 10 + 3 + embargo
    assert ranges["test"][0] - (ranges["val"][1] - 1) == 10 + 3 + embargo
    assert ranges["train"][0] == LOOKBACK + 9 and ranges["test"][1] - 1 == 900 - 1 - 3
    sizes = {name: stop - start for name, (start, stop) in ranges.items()}
    assert sizes["val"] == pytest.approx(2 * sizes["test"], abs=1)


def test_no_validation_split_means_no_gap() -> None:
    ranges = split_ranges(n_bars=500, window=10, horizon=3, embargo=2, val_fraction=0.0, test_fraction=0.2)
    assert ranges["val"][0] == ranges["val"][1]
    assert ranges["test"][0] - (ranges["train"][1] - 1) == 15


def test_too_few_bars_are_reported_with_the_instrument() -> None:
    with pytest.raises(ValueError, match="instrument SYN00: 200 bars are too few for window 64"):
        build_datasets(DataConfig(n_instruments=1, n_bars=200))


def test_normalisation_is_fitted_on_train_rows_only(bundle) -> None:
    raw_rows = []
    for instrument in range(2):
        index = bundle.train.index[bundle.train.index[:, 0] == instrument, 1]
        raw_rows.append(compute_features(_raw(bundle, instrument))[index.min() - SMALL.window + 1 : index.max() + 1])
    expected = FeatureStats.fit(raw_rows)
    np.testing.assert_allclose(bundle.feature_spec.stats.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(bundle.feature_spec.stats.std, expected.std, rtol=1e-12)
    everything = FeatureStats.fit([compute_features(_raw(bundle, i))[LOOKBACK:] for i in range(2)])
    assert not np.allclose(bundle.feature_spec.stats.mean, everything.mean)


def test_later_data_does_not_change_the_stats(tmp_path: Path, bundle) -> None:
    """Rewrite the held-out part of the file: train-fitted stats stay the same."""
    frame = bundle.bars["SYN00"].copy()
    frame.iloc[1200:, :4] *= 3.0
    frame.iloc[1200:, 4] *= 10.0
    path = tmp_path / "SYN00.csv"
    frame.to_csv(path)
    config = SMALL.model_copy(update={"source": "file", "path": path})
    from_file = build_datasets(config)
    reference = build_datasets(SMALL.model_copy(update={"n_instruments": 1}))
    np.testing.assert_allclose(from_file.feature_spec.stats.mean, reference.feature_spec.stats.mean, rtol=1e-9)
    assert from_file.market is None and from_file.symbols == ["SYN00"]


def test_given_stats_are_used_not_refitted() -> None:
    stats = FeatureStats(mean=np.zeros(13), std=np.full(13, 2.0))
    bundle = build_datasets(SMALL, feature_stats=stats)
    assert bundle.feature_spec.stats is stats
    instrument, end = bundle.test.index[3]
    raw = compute_features(_raw(bundle, instrument))[end]
    expected = np.clip(raw.astype(np.float64) / 2.0, -5, 5).astype(np.float32)
    np.testing.assert_array_equal(bundle.test[3][0].numpy()[-1], expected)


@pytest.mark.parametrize("split", SPLITS)
def test_serving_window_equals_training_window(bundle, split: str) -> None:
    """Train/serve parity: window_from_bars on the bars up to t gives dataset's window ending at t."""
    dataset = bundle.split(split)
    for position in (0, len(dataset) // 2, len(dataset) - 1):
        instrument, end = dataset.index[position]
        history = _raw(bundle, instrument)[: end + 1]
        served = window_from_bars(history, bundle.feature_spec)
        np.testing.assert_allclose(served, dataset[position][0].numpy(), rtol=1e-5, atol=1e-5)
        shortest = window_from_bars(history[-bundle.feature_spec.bars_needed :], bundle.feature_spec)
        np.testing.assert_allclose(shortest, served, rtol=1e-5, atol=1e-5)


def test_labels_follow_the_threshold_rule() -> None:
    returns = np.tile([0.01, -0.01], 40)  # one-bar vol is exactly 0.01 once the rolling window is full
    returns[60:] = [0.0, 0.0, 0.05, 0.0, 0.0, -0.05] + [0.0] * 14
    close = 100 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    actions, quantities, forward = label_actions(close, horizon=1, label_threshold=0.5)
    # bar 50: next return is 0.01 vs threshold 0.5 * 0.01 -> buy, excess (0.01 - 0.005) / 0.01 = 0.5
    assert actions[50] == BUY and quantities[50] == pytest.approx(0.5, rel=1e-4)
    assert actions[51] == SELL and quantities[51] == pytest.approx(0.5, rel=1e-4)
    assert actions[60] == HOLD and quantities[60] == 0.0  # zero return
    assert actions[62] == BUY and quantities[62] == 1.0  # a big move is clipped to a full position
    assert forward[62] == pytest.approx(0.05) and np.isnan(forward[-1])


def test_default_class_balance_is_not_dominated_by_hold() -> None:
    bundle = build_datasets(DataConfig())
    counts = bundle.train.action_counts()
    hold_share = counts[HOLD] / counts.sum()
    assert 0.35 <= hold_share <= 0.55
    assert bundle.majority_fraction("train") == pytest.approx(counts.max() / counts.sum())
    quantities = np.concatenate(bundle.train.quantities)
    assert quantities.min() >= 0.0 and quantities.max() <= 1.0


def test_describe_lists_instruments_splits_and_balance(bundle) -> None:
    text = describe_datasets(bundle)
    assert "SYN00" in text and "SYN01" in text and "1500" in text
    for split in SPLITS:
        assert f"{split:<8}{len(bundle.split(split)):>9}" in text
    assert "majority" in text and "trending" in text


def test_bundle_rejects_unknown_split(bundle) -> None:
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        bundle.majority_fraction("holdout")


def test_file_source_keeps_raw_bars(tmp_path: Path, bundle) -> None:
    frames = [frame.assign(symbol=symbol) for symbol, frame in bundle.bars.items()]
    path = tmp_path / "two.parquet"
    pd.concat(frames).to_parquet(path)
    from_file = build_datasets(SMALL.model_copy(update={"source": "file", "path": path}))
    assert from_file.symbols == bundle.symbols and from_file.source == str(path)
    np.testing.assert_array_equal(from_file.train.index, bundle.train.index)
    window_file, action_file, _ = from_file.test[7]
    window_synthetic, action_synthetic, _ = bundle.test[7]
    torch.testing.assert_close(window_file, window_synthetic)
    assert action_file == action_synthetic


# --- walk-forward folds ---------------------------------------------------------------------------------------

FOLDS = 4


def _fold(config: DataConfig, fold: int) -> dict[str, tuple[int, int]]:
    return fold_ranges(1500, config.window, config.horizon, config.embargo_bars, config.val_fraction, fold, FOLDS,
                       config.oos_fraction)


def test_fold_test_periods_tile_the_out_of_sample_share_in_order() -> None:
    config = SMALL
    tests = [_fold(config, fold)["test"] for fold in range(FOLDS)]
    for (_, stop), (start, _) in zip(tests, tests[1:]):
        assert start == stop  # consecutive, no bar in two folds, none skipped
    first_end, last_end = LOOKBACK + config.window - 1, 1500 - 1 - config.horizon
    assert tests[-1][1] == last_end + 1  # the folds reach the last labelled bar
    covered = tests[-1][1] - tests[0][0]
    assert covered == int((last_end - first_end + 1) * config.oos_fraction)
    assert max(stop - start for start, stop in tests) - min(stop - start for start, stop in tests) <= 1


def test_every_fold_trains_only_before_its_test_period_minus_the_embargo() -> None:
    """No train or val label reads a bar within `embargo` bars of the first bar a test window reads."""
    config = SMALL
    previous_train_stop = 0
    for fold in range(FOLDS):
        ranges = _fold(config, fold)
        first_test_bar = ranges["test"][0] - config.window + 1  # the first bar a test window reads
        last_label_bar = max(ranges["train"][1], ranges["val"][1]) - 1 + config.horizon
        assert last_label_bar < first_test_bar - config.embargo_bars
        assert last_label_bar == first_test_bar - config.embargo_bars - 1  # and no more is held back
        assert ranges["train"][1] > previous_train_stop  # an expanding window
        previous_train_stop = ranges["train"][1]


def test_fold_datasets_fit_stats_on_their_own_train_rows_and_index_their_ranges() -> None:
    config = SMALL.model_copy(update={"fold": 1, "folds": FOLDS})
    bundle = build_datasets(config)
    for instrument, symbol in enumerate(bundle.symbols):
        for split in SPLITS:
            ends = bundle.split(split).index[bundle.split(split).index[:, 0] == instrument, 1]
            start, stop = bundle.split_ends[symbol][split]
            assert (ends.min(), ends.max() + 1) == (start, stop)
    later = build_datasets(SMALL.model_copy(update={"fold": 3, "folds": FOLDS}))
    assert not np.allclose(bundle.feature_spec.stats.mean, later.feature_spec.stats.mean)  # more history, new stats
    assert "walk-forward fold 1 of 4" in describe_datasets(bundle)


def test_too_many_folds_for_the_history_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="too few for walk-forward fold 0 of 4"):
        build_datasets(SMALL.model_copy(update={"fold": 0, "folds": FOLDS, "oos_fraction": 0.95}))
    with pytest.raises(ValueError, match="data.fold=4 must be below data.folds=4"):
        DataConfig(fold=4, folds=4)
