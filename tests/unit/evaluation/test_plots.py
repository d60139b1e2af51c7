"""The plots are real PNG images of sensible size, drawn without a display."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hrm_platform.evaluation import metrics, plots
from tests.images import assert_sensible_png


@pytest.fixture
def strategy_returns() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    market = rng.normal(0.0002, 0.004, size=500)
    return {
        "model": 0.6 * market + 0.0004,
        "buy_and_hold": market,
        "momentum": np.roll(market, 1) * 0.5,
        "oracle": np.abs(market) * 0.5,
        "flat": np.zeros(500),
    }


def test_equity_and_drawdown_pngs(tmp_path, strategy_returns):
    timestamps = pd.date_range("2024-01-01", periods=500, freq="15min", tz="UTC")
    equity = {name: metrics.equity_curve(r) for name, r in strategy_returns.items()}
    drawdowns = {name: metrics.drawdown_curve(r) for name, r in strategy_returns.items()}
    equity_png = plots.plot_equity_curves(equity, timestamps, tmp_path / "equity.png", "test split")
    drawdown_png = plots.plot_drawdowns(drawdowns, timestamps, tmp_path / "drawdown.png", "test split")
    assert_sensible_png(equity_png, min_width=800)
    assert_sensible_png(drawdown_png, min_width=800)


def test_training_curves_png_from_nested_history(tmp_path):
    history = [
        {"epoch": epoch, "train": {"loss": 1.2 / epoch, "accuracy": 0.4 + 0.05 * epoch},
         "val": {"loss": 1.3 / epoch, "accuracy": 0.38 + 0.04 * epoch}}
        for epoch in range(1, 6)
    ]
    assert plots._numeric_series(history)["val_loss"] == pytest.approx([1.3 / e for e in range(1, 6)])
    assert_sensible_png(plots.plot_training_curves(history, tmp_path / "training.png"), min_width=800)


def test_training_curves_png_without_history_still_renders(tmp_path):
    assert_sensible_png(plots.plot_training_curves([], tmp_path / "training.png"), min_width=800)


def test_confusion_and_segments_pngs(tmp_path):
    matrix = np.array([[50, 10, 5], [8, 30, 2], [9, 1, 25]])
    assert_sensible_png(plots.plot_confusion_matrix(matrix, ("hold", "buy", "sell"), tmp_path / "confusion.png"))
    segments = plots.plot_segments_histogram({"1": 120, "2": 40, "3": 15, "4": 5}, tmp_path / "segments.png")
    assert_sensible_png(segments)
