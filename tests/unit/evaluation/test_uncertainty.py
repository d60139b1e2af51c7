"""Bootstrap intervals find planted effects, miss pure noise, and follow the seed and the block length.

Series are synthetic with known truth: a drift whose annualised Sharpe is 3, a model that is a baseline plus a
steady edge, a score whose correlation with the forward return is 1 / sqrt(101) ~ 0.0995.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.stats import pearsonr, spearmanr

from hrm_platform.config import EvalConfig
from hrm_platform.evaluation.metrics import sharpe_ratio
from hrm_platform.evaluation.uncertainty import (
    BootstrapSettings,
    Interval,
    block_length,
    information_coefficients,
    interval_words,
    resample_indices,
    sharpe_difference_interval,
    sharpe_interval,
    strategy_intervals,
)

DAILY = 252  # periods per year: a per-bar Sharpe of 3 / sqrt(252) ~ 0.19 is visible in a few thousand bars
SETTINGS = BootstrapSettings(confidence=0.95, resamples=1000, block=None, seed=0)


def ar1(n_bars: int, phi: float, seed: int) -> np.ndarray:
    """(n_bars,) AR(1) noise x_t = phi * x_{t-1} + e_t scaled to unit marginal variance."""
    innovations = np.random.default_rng(seed).standard_normal(n_bars) * np.sqrt(1.0 - phi**2)
    return lfilter([1.0], [1.0, -phi], innovations)


def noise(n_bars: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n_bars)


def assert_same_interval(first: Interval, second: Interval) -> None:
    """Equal up to the rounding of a matrix product taken over more columns at once."""
    assert (first.estimate, first.low, first.high) == pytest.approx((second.estimate, second.low, second.high))
    assert first.level == second.level


def indices_for(returns: np.ndarray, settings: BootstrapSettings = SETTINGS) -> np.ndarray:
    return resample_indices(returns.size, settings, returns)


# --- settings and resamples -----------------------------------------------------------------------------------


def test_settings_come_from_the_eval_config():
    config = EvalConfig(confidence=0.9, bootstrap_resamples=200, bootstrap_block=3.5, bootstrap_seed=5)
    assert BootstrapSettings.from_config(config) == BootstrapSettings(confidence=0.9, resamples=200, block=3.5, seed=5)


def test_resample_indices_shape_range_and_seed():
    series = ar1(500, 0.5, seed=1)
    first = indices_for(series)
    assert first.shape == (1000, 500) and first.dtype == np.int64
    assert first.min() >= 0 and first.max() <= 499
    np.testing.assert_array_equal(first, indices_for(series))
    other_seed = BootstrapSettings(SETTINGS.confidence, SETTINGS.resamples, SETTINGS.block, seed=1)
    assert not np.array_equal(first, indices_for(series, other_seed))


def test_block_length_follows_the_dependence_of_the_series():
    # Politis-White: near 1 (the iid bootstrap) without memory, tens of bars for a persistent AR(1).
    assert block_length(SETTINGS, noise(5000, seed=2)) < 3.0
    assert block_length(SETTINGS, ar1(5000, 0.9, seed=2)) > 10.0
    assert block_length(SETTINGS, np.zeros(100)) == 1.0  # constant: nothing to keep, and no NaN from arch
    fixed = BootstrapSettings(0.95, 1000, block=7.5, seed=0)
    assert block_length(fixed, noise(5000, seed=2)) == 7.5


def test_mean_run_of_consecutive_bars_matches_the_block_length():
    settings = BootstrapSettings(0.95, 200, block=20.0, seed=0)
    indices = resample_indices(4000, settings, np.zeros(4000))
    steps = np.diff(indices, axis=1)
    continues = (steps == 1) | (steps == -3999)  # the next bar, wrapping round at the end
    # A new block starts with probability 1/20 at each bar, so 95% of steps continue the current block.
    assert continues.mean() == pytest.approx(0.95, abs=0.005)


# --- Sharpe ---------------------------------------------------------------------------------------------------


def planted_sharpe_returns(n_bars: int, annual_sharpe: float, seed: int) -> np.ndarray:
    """AR(1) returns (phi 0.3, unit marginal std) plus a drift whose annualised Sharpe is `annual_sharpe`."""
    return ar1(n_bars, 0.3, seed) + annual_sharpe / np.sqrt(DAILY)


def test_planted_sharpe_lies_above_zero():
    returns = planted_sharpe_returns(3000, annual_sharpe=3.0, seed=3)
    interval = sharpe_interval(returns, DAILY, indices_for(returns), SETTINGS.confidence)
    assert interval.estimate == sharpe_ratio(returns, DAILY)
    assert interval.estimate == pytest.approx(3.0, abs=1.0)
    assert 0.0 < interval.low < interval.estimate < interval.high
    assert not interval.spans_zero


def test_pure_noise_sharpe_spans_zero():
    returns = ar1(3000, 0.3, seed=4)
    interval = sharpe_interval(returns, DAILY, indices_for(returns), SETTINGS.confidence)
    assert interval.spans_zero
    assert interval.low < interval.estimate < interval.high


def test_resampled_sharpe_is_metrics_sharpe_of_the_resampled_bars():
    returns = planted_sharpe_returns(800, annual_sharpe=1.0, seed=5)
    one_resample = indices_for(returns)[17]
    # Every resample the same bars: the whole interval collapses onto metrics.sharpe_ratio of those bars.
    interval = sharpe_interval(returns, DAILY, np.tile(one_resample, (4, 1)), 0.95)
    assert interval.low == pytest.approx(sharpe_ratio(returns[one_resample], DAILY), rel=1e-10)
    assert interval.high == pytest.approx(sharpe_ratio(returns[one_resample], DAILY), rel=1e-10)
    identity = sharpe_interval(returns, DAILY, np.tile(np.arange(800), (3, 1)), 0.95)
    assert identity.low == pytest.approx(identity.estimate, rel=1e-10)


def test_constant_resampled_returns_have_zero_sharpe_like_metrics():
    returns = np.r_[np.full(50, 0.01), np.full(50, -0.01)]
    every_bar_is_bar_0 = np.zeros((3, 100), dtype=np.int64)
    interval = sharpe_interval(returns, DAILY, every_bar_is_bar_0, 0.95)
    assert (interval.low, interval.high) == (0.0, 0.0)


def test_paired_difference_finds_a_steady_edge_that_single_intervals_cannot():
    baseline = noise(3000, seed=6)
    model = baseline + 0.03 + 0.1 * noise(3000, seed=7)  # the baseline plus a small, steady edge
    indices = indices_for(model)
    difference = sharpe_difference_interval(model, baseline, DAILY, indices, SETTINGS.confidence)
    model_alone = sharpe_interval(model, DAILY, indices, SETTINGS.confidence)
    baseline_alone = sharpe_interval(baseline, DAILY, indices, SETTINGS.confidence)

    assert difference.estimate == pytest.approx(sharpe_ratio(model, DAILY) - sharpe_ratio(baseline, DAILY))
    assert difference.low > 0.0  # the edge, ~0.03 * sqrt(252) ~ 0.48 a year, is found
    assert model_alone.low < baseline_alone.high  # yet the two unpaired intervals overlap


def test_difference_of_independent_noise_spans_zero():
    first, second = ar1(3000, 0.3, seed=8), ar1(3000, 0.3, seed=9)
    difference = sharpe_difference_interval(first, second, DAILY, indices_for(first), SETTINGS.confidence)
    assert difference.spans_zero


def test_same_seed_same_interval_and_longer_blocks_widen_it_on_persistent_data():
    returns = ar1(4000, 0.8, seed=10) + 0.05

    def interval_with(block: float, seed: int = 0) -> Interval:
        settings = BootstrapSettings(0.95, 1000, block, seed)
        return sharpe_interval(returns, DAILY, indices_for(returns, settings), 0.95)

    assert interval_with(1.0) == interval_with(1.0)
    iid_width = interval_with(1.0).high - interval_with(1.0).low
    block_width = interval_with(50.0).high - interval_with(50.0).low
    # The long-run std of AR(1) with phi = 0.8 is sqrt((1 + 0.8) / (1 - 0.8)) = 3 times the iid one.
    assert block_width / iid_width == pytest.approx(3.0, rel=0.3)


def test_strategy_intervals_share_one_index_set():
    model = planted_sharpe_returns(2000, annual_sharpe=3.0, seed=11)
    returns = {"model": model, "buy_and_hold": noise(2000, seed=12), "momentum": noise(2000, seed=13)}
    settings = BootstrapSettings(0.9, 500, None, seed=3)
    result = strategy_intervals(returns, "model", DAILY, settings)

    indices = resample_indices(2000, settings, model)  # block chosen on the reference
    assert result.block_length == block_length(settings, model)
    assert set(result.sharpe) == {"model", "buy_and_hold", "momentum"}
    assert set(result.difference) == {"buy_and_hold", "momentum"}
    for name, series in returns.items():
        assert_same_interval(result.sharpe[name], sharpe_interval(series, DAILY, indices, 0.9))
    paired = sharpe_difference_interval(model, returns["momentum"], DAILY, indices, 0.9)
    assert_same_interval(result.difference["momentum"], paired)
    assert json.loads(json.dumps(result.to_dict()))["sharpe"]["model"]["spans_zero"] is False


def test_strategy_intervals_reject_an_unknown_reference_and_misaligned_series():
    with pytest.raises(ValueError, match="reference 'hrm'"):
        strategy_intervals({"model": noise(100, 0)}, "hrm", DAILY, SETTINGS)
    with pytest.raises(ValueError, match="one length"):
        strategy_intervals({"model": noise(100, 0), "flat": np.zeros(99)}, "model", DAILY, SETTINGS)


# --- information coefficient ----------------------------------------------------------------------------------

IC_SETTINGS = BootstrapSettings(confidence=0.95, resamples=400, block=None, seed=0)


def test_weak_planted_correlation_is_detected():
    forward_return = noise(20_000, seed=14)
    score = forward_return + 10.0 * noise(20_000, seed=15)  # correlation 1 / sqrt(1 + 100) ~ 0.0995
    result = information_coefficients(score, forward_return, IC_SETTINGS)

    assert result.pearson.estimate == pytest.approx(pearsonr(score, forward_return)[0], abs=1e-12)
    assert result.rank.estimate == pytest.approx(spearmanr(score, forward_return)[0], abs=1e-12)
    assert result.pearson.estimate == pytest.approx(0.0995, abs=0.02)
    for ic, t_stat in ((result.pearson, result.pearson_t), (result.rank, result.rank_t)):
        assert ic.low > 0.0
        assert t_stat > 2.0
    assert (result.n, result.n_dropped) == (20_000, 0)


def test_unrelated_score_spans_zero():
    result = information_coefficients(noise(20_000, seed=16), noise(20_000, seed=17), IC_SETTINGS)
    assert result.pearson.spans_zero and result.rank.spans_zero
    assert abs(result.pearson_t) < 2.0 and abs(result.rank_t) < 2.0


def test_rank_ic_ignores_a_monotone_transform_of_the_score():
    forward_return = noise(5000, seed=18)
    score = forward_return + 5.0 * noise(5000, seed=19)
    plain = information_coefficients(score, forward_return, IC_SETTINGS)
    cubed = information_coefficients(score**3, forward_return, IC_SETTINGS)
    assert cubed.rank.estimate == pytest.approx(plain.rank.estimate, abs=1e-12)
    assert cubed.rank.low == pytest.approx(plain.rank.low, abs=1e-12)
    assert cubed.rank.high == pytest.approx(plain.rank.high, abs=1e-12)
    assert cubed.pearson.estimate != pytest.approx(plain.pearson.estimate, abs=1e-3)  # Pearson does notice


def test_overlapping_forward_returns_widen_the_ic_interval_and_nan_tail_is_dropped():
    horizon = 20
    bar_returns = noise(6000 + horizon, seed=20)
    # h-bar forward return from each bar; the last h bars have none yet.
    forward_return = np.convolve(bar_returns, np.ones(horizon), mode="valid")[1 : 6000 + 1]
    forward_return = np.r_[forward_return[: 6000 - horizon], np.full(horizon, np.nan)]  # (6000,)
    score = ar1(6000, 0.95, seed=21)  # persistent and unrelated: any IC here is luck
    automatic = information_coefficients(score, forward_return, IC_SETTINGS)
    iid = information_coefficients(score, forward_return, BootstrapSettings(0.95, 400, 1.0, 0))

    assert (automatic.n, automatic.n_dropped) == (6000 - horizon, horizon)
    assert automatic.block_length > 5.0
    # Overlap and persistence make the pairs dependent: the iid bootstrap would be far too confident.
    automatic_width = automatic.pearson.high - automatic.pearson.low
    assert automatic_width > 2.0 * (iid.pearson.high - iid.pearson.low)
    kept = slice(0, 6000 - horizon)
    clean = information_coefficients(score[kept], forward_return[kept], IC_SETTINGS)
    assert (clean.pearson, clean.rank, clean.n_dropped) == (automatic.pearson, automatic.rank, 0)


# --- words ----------------------------------------------------------------------------------------------------


def test_interval_words_match_the_example():
    words = interval_words("model Sharpe", Interval(estimate=1.2, low=-0.4, high=2.8, level=0.95))
    assert words == (
        "model Sharpe 1.20 (95% CI -0.40 to 2.80): the interval spans zero, so this period cannot tell it from zero"
    )


@pytest.mark.parametrize(
    ("low", "high", "side"),
    [(-0.4, 2.8, None), (0.0, 1.0, None), (-1.0, 0.0, None), (0.3, 2.0, "above"), (-2.0, -0.1, "below")],
)
def test_interval_words_say_spans_zero_exactly_when_it_does(low, high, side):
    interval = Interval(estimate=(low + high) / 2, low=low, high=high, level=0.9)
    words = interval_words("IC", interval, decimals=3)
    assert ("spans zero" in words) == interval.spans_zero == (side is None)
    assert "(90% CI" in words
    if side is not None:
        assert f"lies {side} zero" in words
        assert ("positive" if side == "above" else "negative") in words
