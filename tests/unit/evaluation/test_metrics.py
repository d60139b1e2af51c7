"""Every metric against values worked out by hand on small series (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hrm_platform.evaluation import metrics

ACTIONS = ("hold", "buy", "sell")


def test_confusion_matrix_and_classification_metrics():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 0, 2, 1])
    # rows = true, columns = predicted
    #   hold: 2 hold, 1 buy; buy: 2 buy; sell: 1 hold, 1 buy, 1 sell
    expected = [[2, 1, 0], [0, 2, 0], [1, 1, 1]]
    assert metrics.confusion_matrix(true, pred).tolist() == expected

    result = metrics.classification_metrics(true, pred, ACTIONS)
    assert result["accuracy"] == pytest.approx(5 / 8)
    # precision = diagonal / column sum: hold 2/3, buy 2/4, sell 1/1
    assert result["precision"] == pytest.approx({"hold": 2 / 3, "buy": 0.5, "sell": 1.0})
    # recall = diagonal / row sum: hold 2/3, buy 2/2, sell 1/3
    assert result["recall"] == pytest.approx({"hold": 2 / 3, "buy": 1.0, "sell": 1 / 3})
    assert result["support"] == {"hold": 3, "buy": 2, "sell": 3}
    assert result["confusion_matrix"] == expected


def test_class_never_predicted_has_zero_precision_not_nan():
    result = metrics.classification_metrics(np.array([0, 1, 2]), np.array([0, 0, 0]), ACTIONS)
    assert result["precision"] == {"hold": pytest.approx(1 / 3), "buy": 0.0, "sell": 0.0}
    assert result["recall"] == {"hold": 1.0, "buy": 0.0, "sell": 0.0}


def test_segments_distribution():
    result = metrics.segments_distribution(np.array([1, 1, 2, 4, 4, 4]), max_segments=4)
    assert result["counts"] == {"1": 2, "2": 1, "3": 0, "4": 3}
    assert result["shares"] == pytest.approx({"1": 2 / 6, "2": 1 / 6, "3": 0.0, "4": 3 / 6})
    assert result["mean"] == pytest.approx(16 / 6)  # (1+1+2+4+4+4) / 6
    with pytest.raises(ValueError, match="outside 1..4"):
        metrics.segments_distribution(np.array([0, 2]), max_segments=4)


def test_sharpe_sortino_and_returns_on_an_alternating_series():
    returns = np.array([0.02, -0.01, 0.02, -0.01])
    # mean = 0.005; deviations = +-0.015, sample variance = 4 * 0.000225 / 3 = 0.0003, std = 0.01732051
    # sharpe = 0.005 / 0.01732051 * sqrt(12) = 0.288675 * 3.464102 = 1.0
    assert metrics.sharpe_ratio(returns, periods_per_year=12) == pytest.approx(1.0)
    # downside deviation = sqrt(mean([0, 1e-4, 0, 1e-4])) = sqrt(5e-5) = 0.00707107
    # sortino = 0.005 / 0.00707107 * sqrt(12) = 0.707107 * 3.464102 = sqrt(6) = 2.449490
    assert metrics.sortino_ratio(returns, periods_per_year=12) == pytest.approx(math.sqrt(6))
    # equity = 1.02 * 0.99 * 1.02 * 0.99 = 1.0098^2 = 1.01969604
    assert metrics.total_return(returns) == pytest.approx(0.01969604)
    # 4 bars at 12 per year = 1/3 year: annualised = 1.01969604^3 - 1 = 1.03978001 * 1.01969604 - 1 = 0.0602596
    assert metrics.annualised_return(returns, periods_per_year=12) == pytest.approx(1.01969604**3 - 1)
    assert metrics.annualised_return(returns, periods_per_year=12) == pytest.approx(0.0602596, abs=1e-7)


def test_sharpe_of_constant_returns_is_zero_not_infinite():
    assert metrics.sharpe_ratio(np.full(10, 0.001), periods_per_year=252) == 0.0
    assert metrics.sortino_ratio(np.full(10, 0.001), periods_per_year=252) == 0.0


def test_drawdown_from_a_peak_reached_mid_series():
    returns = np.array([0.10, -0.20, 0.05, 0.25, -0.10])
    # equity: 1.1, 0.88, 0.924, 1.155, 1.0395 ; running peak: 1.1, 1.1, 1.1, 1.155, 1.155
    # drawdown: 0, 1 - 0.88/1.1 = 0.2, 1 - 0.924/1.1 = 0.16, 0, 1 - 1.0395/1.155 = 0.1
    np.testing.assert_allclose(metrics.equity_curve(returns), [1.1, 0.88, 0.924, 1.155, 1.0395])
    np.testing.assert_allclose(metrics.drawdown_curve(returns), [0.0, 0.2, 0.16, 0.0, 0.1], atol=1e-12)
    assert metrics.max_drawdown(returns) == pytest.approx(0.2)


def test_drawdown_counts_a_loss_on_the_first_bar_against_the_starting_capital():
    # equity 0.5 then 0.75; the peak is the starting 1.0, so the drawdown is 0.5 (not 0)
    assert metrics.max_drawdown(np.array([-0.5, 0.5])) == pytest.approx(0.5)
    assert metrics.max_drawdown(np.array([0.01, 0.02])) == 0.0


def test_hit_rate_turnover_exposure():
    positions = np.array([1.0, 0.0, -1.0, 0.5, -0.5])
    asset = np.array([0.01, 0.02, 0.01, -0.01, -0.02])
    # gross pnl: 0.01, 0 (flat), -0.01, -0.005, +0.01 -> 2 winners of 4 bars in the market
    assert metrics.hit_rate(positions, asset) == pytest.approx(0.5)
    # |changes| from 0: 1, 1, 1, 1.5, 1 -> 5.5 / 5
    assert metrics.turnover(positions) == pytest.approx(1.1)
    # |positions|: 1, 0, 1, 0.5, 0.5 -> 3 / 5
    assert metrics.exposure(positions) == pytest.approx(0.6)
    assert metrics.hit_rate(np.zeros(3), np.ones(3)) == 0.0


def test_turnover_of_two_instruments_side_by_side_is_the_equal_weight_portfolio_turnover():
    positions = np.array([[1.0, 0.0], [1.0, -1.0], [0.0, -1.0]])
    # instrument A changes 1, 0, 1; B changes 0, 1, 0 -> (2 + 1) / (3 bars * 2 instruments) = 0.5
    assert metrics.turnover(positions) == pytest.approx(0.5)


def test_trading_metrics_collects_everything():
    returns = np.array([0.02, -0.01, 0.02, -0.01])
    positions = np.array([1.0, 1.0, 1.0, 1.0])
    result = metrics.trading_metrics(returns, positions, returns, periods_per_year=12)
    assert result["sharpe"] == pytest.approx(1.0)
    assert result["max_drawdown"] == pytest.approx(0.01)  # 1.02 -> 1.0098
    assert result["hit_rate"] == pytest.approx(0.5)
    assert result["turnover"] == pytest.approx(0.25)  # one entry trade over 4 bars
    assert result["exposure"] == 1.0
    assert result["pnl"] == pytest.approx(0.02)
    assert result["n_bars"] == 4
