"""Backtest timing, costs, baselines and the no-look-ahead property, on hand-checked numbers and real models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hrm_platform.config import ModelConfig
from hrm_platform.data.features import FEATURE_NAMES, LOOKBACK, FeatureSpec, FeatureStats, compute_features
from hrm_platform.data.market import generate_market
from hrm_platform.evaluation import backtest
from hrm_platform.model.hrm import HRM

WINDOW = 16


def test_position_earns_the_next_bar_close_to_close_and_pays_costs_on_changes():
    close = np.array([100.0, 101.0, 99.99, 100.99, 100.99])
    end_bars = np.array([0, 1, 2, 3])
    asset = backtest.next_bar_returns(close, end_bars)
    # 101/100 - 1 = 0.01, 99.99/101 - 1 = -0.01, 100.99/99.99 - 1 = 0.0100010, 0
    np.testing.assert_allclose(asset, [0.01, -0.01, 1.0 / 99.99, 0.0])
    run = backtest.run_strategy(np.array([1.0, -0.5, -0.5, 0.0]), asset, cost_bps=10.0)
    # trades |1-0|, |-0.5-1|, 0, |0+0.5| = 1, 1.5, 0, 0.5 ; cost = 0.001 per unit
    np.testing.assert_allclose(run.costs, [0.001, 0.0015, 0.0, 0.0005])
    # pnl: 1*0.01 - 0.001 ; -0.5*-0.01 - 0.0015 ; -0.5*0.0100010 ; 0 - 0.0005
    np.testing.assert_allclose(run.returns, [0.009, 0.0035, -0.5 / 99.99, -0.0005])


def test_the_last_decision_needs_a_next_bar():
    with pytest.raises(ValueError, match="no next bar"):
        backtest.next_bar_returns(np.array([1.0, 2.0, 3.0]), np.array([1, 2]))


def test_positions_from_outputs_use_argmax_direction_times_quantity():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    quantity = np.array([0.9, 0.5, 0.25, 1.2])  # a quantity above 1 is clipped
    np.testing.assert_allclose(backtest.positions_from_outputs(probabilities, quantity), [0.0, 0.5, -0.25, -1.0])


def test_momentum_is_the_sign_of_the_lookback_return():
    close = np.array([10.0, 11.0, 12.0, 11.5, 11.0, 11.0])
    # t=2: 12 vs 10 -> +1; t=3: 11.5 vs 11 -> +1; t=4: 11 vs 12 -> -1; t=5: 11 vs 11.5 -> -1; t=1: no history -> 0
    np.testing.assert_array_equal(backtest.momentum_positions(close, np.array([1, 2, 3, 4, 5]), 2),
                                  [0.0, 1.0, 1.0, -1.0, -1.0])


def test_oracle_trades_the_sign_of_the_expectation_only_past_a_round_trip():
    expected = np.array([0.001, -0.003, 0.00015, -0.0001, np.nan])
    # cost 1 bp: round trip 2 bp = 0.0002 ; 0.00015 and -0.0001 are not worth it, NaN is flat
    np.testing.assert_array_equal(backtest.oracle_positions(expected, np.arange(5), cost_bps=1.0),
                                  [1.0, -1.0, 0.0, 0.0, 0.0])


def test_windows_end_at_the_decision_bar():
    features = np.arange(20, dtype=np.float32).reshape(10, 2)  # row t = [2t, 2t+1]
    windows = backtest.windows_ending_at(features, np.array([3, 9]), window=3)
    np.testing.assert_array_equal(windows[0], features[1:4])
    np.testing.assert_array_equal(windows[1], features[7:10])
    with pytest.raises(ValueError):
        backtest.windows_ending_at(features, np.array([1]), window=3)


def _instrument(symbol, timestamps, model_returns, positions):
    runs = {"model": backtest.StrategyRun(np.asarray(positions, float), np.asarray(model_returns, float),
                                          np.zeros(len(positions)))}
    return backtest.InstrumentBacktest(symbol, pd.DatetimeIndex(timestamps), np.zeros(len(positions)), runs)


def test_equal_weight_portfolio_averages_the_instruments_present_at_each_time():
    times = pd.date_range("2024-01-01", periods=3, freq="15min", tz="UTC")
    first = _instrument("A", times, [0.02, 0.00, -0.01], [1.0, 1.0, 0.0])
    second = _instrument("B", times[1:], [0.04, 0.03], [-1.0, -1.0])  # starts one bar later
    portfolio = backtest.equal_weight_portfolio([first, second])
    run = portfolio.runs["model"]
    # t0: only A (0.02); t1: (0.00 + 0.04) / 2; t2: (-0.01 + 0.03) / 2
    np.testing.assert_allclose(run.returns, [0.02, 0.02, 0.01])
    np.testing.assert_array_equal(run.positions, [[1.0, 0.0], [1.0, -1.0], [0.0, -1.0]])


# --- look-ahead: the real position function on a real model and real windows ----------------------------------


@pytest.fixture(scope="module")
def market_bars() -> np.ndarray:
    frame = generate_market(n_instruments=1, n_bars=420, seed=3, horizon=4).bars["SYN00"]
    return frame[["open", "high", "low", "close", "volume"]].to_numpy()


@pytest.fixture(scope="module")
def feature_spec(market_bars) -> FeatureSpec:
    features = compute_features(market_bars)[LOOKBACK:]
    return FeatureSpec(FEATURE_NAMES, LOOKBACK, WINDOW, FeatureStats.fit([features]))


@pytest.fixture(scope="module")
def decisive_model(market_bars, feature_spec) -> HRM:
    """A small untrained HRM whose action logits are centred over these bars, so that its argmax moves with
    the inputs (an untrained model's logits are dominated by a constant, which would make it always pick one
    action and the look-ahead test vacuous)."""
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=2, h_layers=1, l_layers=1, h_cycles=1, l_cycles=1, max_segments=2)
    model = HRM(config, n_features=len(FEATURE_NAMES), window=WINDOW).eval()
    with torch.no_grad():
        model.heads.action.weight.mul_(10.0)
    end_bars = np.arange(LOOKBACK + WINDOW - 1, len(market_bars) - 1)
    probabilities = backtest.model_decisions(model, market_bars, end_bars, feature_spec).probabilities
    with torch.no_grad():
        # log p = logits - logsumexp; removing each class's mean log p centres the logits across windows
        model.heads.action.bias -= torch.from_numpy(np.log(np.maximum(probabilities, 1e-30)).mean(axis=0))
    return model


def _positions(model, bars, end_bars, spec) -> np.ndarray:
    torch.set_num_threads(1)
    return backtest.model_decisions(model, bars, end_bars, spec, batch_size=64).positions


def test_changing_bars_after_t_never_changes_the_position_taken_at_t(market_bars, feature_spec, decisive_model):
    end_bars = np.arange(LOOKBACK + WINDOW - 1, len(market_bars) - 1)
    original = _positions(decisive_model, market_bars, end_bars, feature_spec)
    # Long, short and flat all occur, with varying sizes: otherwise the comparison below would mean little.
    assert set(np.sign(original)) == {-1.0, 0.0, 1.0} and len(np.unique(original)) > 50
    rng = np.random.default_rng(1)
    for cut in (end_bars[10], end_bars[len(end_bars) // 2], end_bars[-5]):
        perturbed = market_bars.copy()
        # After the cut: a price level shift of +-30% plus noise, and a different volume path.
        factor = np.exp(rng.normal(0.0, 0.02, size=len(perturbed) - cut - 1)) * rng.choice([0.7, 1.3])
        perturbed[cut + 1:, :4] *= factor[:, None]
        perturbed[cut + 1:, 4] *= rng.uniform(0.2, 5.0, size=len(perturbed) - cut - 1)
        changed = _positions(decisive_model, perturbed, end_bars, feature_spec)
        decided_before = end_bars <= cut
        np.testing.assert_array_equal(changed[decided_before], original[decided_before])
        # The perturbation is felt afterwards: the test would catch a position that leaked the future.
        assert not np.array_equal(changed[~decided_before], original[~decided_before])


def test_the_pnl_of_the_position_at_t_depends_on_bar_t_plus_1_only(market_bars):
    close = market_bars[:, 3].copy()
    end_bars = np.arange(100, 200)
    positions = np.sign(np.sin(np.arange(100)))
    base = backtest.run_strategy(positions, backtest.next_bar_returns(close, end_bars), cost_bps=1.0).returns
    close[151] *= 1.05  # moves the returns decided at t=150 (into 151) and t=151 (out of 151)
    moved = backtest.run_strategy(positions, backtest.next_bar_returns(close, end_bars), cost_bps=1.0).returns
    differs = np.flatnonzero(~np.isclose(base, moved, rtol=0, atol=1e-15)) + 100
    assert set(differs) <= {150, 151} and 150 in differs


def test_batching_does_not_change_decisions(market_bars, feature_spec, decisive_model):
    end_bars = np.arange(LOOKBACK + WINDOW - 1, LOOKBACK + WINDOW + 60)
    one_batch = backtest.model_decisions(decisive_model, market_bars, end_bars, feature_spec, batch_size=512)
    many = backtest.model_decisions(decisive_model, market_bars, end_bars, feature_spec, batch_size=7)
    np.testing.assert_allclose(one_batch.probabilities, many.probabilities, atol=1e-5)
    np.testing.assert_array_equal(one_batch.segments_used, many.segments_used)
