"""Evaluation metrics, pure numpy: classification, ACT segments, trading.

Conventions (shared with backtest.py):
- `returns` (N,) are per-bar *simple* net returns of a strategy: r_t = pos_t * (c_{t+1}/c_t - 1) - cost_t.
- `positions` (N,) are the positions held over each of those bars (signed fraction of the maximum position).
- The equity curve starts at 1.0 and compounds: E_t = prod_{s<=t} (1 + r_s).
- `periods_per_year` is the bar frequency (config `data.bars_per_year`; 252 * 26 for 15-minute bars).

Formulas (N bars, P periods per year):
    total_return       = E_N - 1
    annualised_return  = E_N ** (P / N) - 1
    sharpe             = mean(r) / std(r, ddof=1) * sqrt(P)                  (0 when std is 0)
    sortino            = mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(P)      (0 when there is no loss)
    max_drawdown       = max_t (1 - E_t / max_{s<=t} E_s), with E_{-1} = 1   (a fraction, >= 0)
    hit_rate           = #(bars in the market with gross PnL > 0) / #(bars in the market), in the market = pos != 0
    turnover           = mean_t |pos_t - pos_{t-1}|, pos_{-1} = the position held before the period (0)
    exposure           = mean_t |pos_t|
"""

from __future__ import annotations

import numpy as np

from hrm_platform.actions import N_ACTIONS

# --- classification -------------------------------------------------------------------------------------------


def confusion_matrix(true_labels: np.ndarray, predicted_labels: np.ndarray, n_classes: int = N_ACTIONS) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; row = true class, column = predicted class."""
    true_labels = np.asarray(true_labels, dtype=np.int64)
    predicted_labels = np.asarray(predicted_labels, dtype=np.int64)
    if true_labels.shape != predicted_labels.shape:
        raise ValueError(f"label shapes differ: {true_labels.shape} vs {predicted_labels.shape}")
    flat = true_labels * n_classes + predicted_labels
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(
    true_labels: np.ndarray, predicted_labels: np.ndarray, class_names: tuple[str, ...]
) -> dict:
    """accuracy = trace(C) / sum(C); precision_k = C[k,k] / sum_i C[i,k]; recall_k = C[k,k] / sum_j C[k,j].

    A class never predicted (or never present) gets precision (recall) 0.0 rather than NaN, so the JSON stays
    plain numbers; the confusion matrix shows the counts.
    """
    matrix = confusion_matrix(true_labels, predicted_labels, len(class_names))
    correct = np.diag(matrix).astype(np.float64)
    predicted_per_class = matrix.sum(axis=0)
    true_per_class = matrix.sum(axis=1)
    total = matrix.sum()
    return {
        "accuracy": float(correct.sum() / total) if total else 0.0,
        "precision": {name: _ratio(correct[k], predicted_per_class[k]) for k, name in enumerate(class_names)},
        "recall": {name: _ratio(correct[k], true_per_class[k]) for k, name in enumerate(class_names)},
        "support": {name: int(true_per_class[k]) for k, name in enumerate(class_names)},
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }


def segments_distribution(segments_used: np.ndarray, max_segments: int) -> dict:
    """How many ACT segments inference used: counts and shares for 1..max_segments, and the mean."""
    segments_used = np.asarray(segments_used, dtype=np.int64)
    if segments_used.size and (segments_used.min() < 1 or segments_used.max() > max_segments):
        raise ValueError(f"segments_used outside 1..{max_segments}: [{segments_used.min()}, {segments_used.max()}]")
    counts = np.bincount(segments_used, minlength=max_segments + 1)[1:]
    total = max(int(counts.sum()), 1)
    return {
        "counts": {str(k + 1): int(c) for k, c in enumerate(counts)},
        "shares": {str(k + 1): float(c / total) for k, c in enumerate(counts)},
        "mean": float(segments_used.mean()) if segments_used.size else 0.0,
        "max_segments": int(max_segments),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


# --- trading --------------------------------------------------------------------------------------------------


def equity_curve(returns: np.ndarray) -> np.ndarray:
    """(N,) compounded equity after each bar, starting from 1.0 before the first bar."""
    return np.cumprod(1.0 + np.asarray(returns, dtype=np.float64))


def drawdown_curve(returns: np.ndarray) -> np.ndarray:
    """(N,) 1 - E_t / running peak of E (the peak includes the starting 1.0): 0 at a new high, > 0 below it."""
    equity = equity_curve(returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return 1.0 - equity / peak


def total_return(returns: np.ndarray) -> float:
    returns = np.asarray(returns, dtype=np.float64)
    return float(equity_curve(returns)[-1] - 1.0) if returns.size else 0.0


def annualised_return(returns: np.ndarray, periods_per_year: float) -> float:
    """Geometric: E_N ** (P / N) - 1. A total loss (E_N <= 0) annualises to -1."""
    returns = np.asarray(returns, dtype=np.float64)
    if not returns.size:
        return 0.0
    final = equity_curve(returns)[-1]
    if final <= 0:
        return -1.0
    return float(np.exp(np.log(final) * periods_per_year / returns.size) - 1.0)


def sharpe_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    """mean / sample std (ddof=1) of per-bar returns, times sqrt(P); risk-free rate 0."""
    returns = np.asarray(returns, dtype=np.float64)
    if returns.size < 2:
        return 0.0
    std = returns.std(ddof=1)
    if std <= 1e-15:
        return 0.0
    return float(returns.mean() / std * np.sqrt(periods_per_year))


def sortino_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    """mean / downside deviation times sqrt(P); downside deviation = sqrt(mean(min(r, 0)^2)) over all bars."""
    returns = np.asarray(returns, dtype=np.float64)
    if not returns.size:
        return 0.0
    downside = np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    if downside <= 1e-15:
        return 0.0
    return float(returns.mean() / downside * np.sqrt(periods_per_year))


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall from a running peak of equity, as a fraction of that peak (0.25 = -25%)."""
    returns = np.asarray(returns, dtype=np.float64)
    return float(drawdown_curve(returns).max()) if returns.size else 0.0


def hit_rate(positions: np.ndarray, asset_returns: np.ndarray) -> float:
    """Share of bars in the market (pos != 0) whose gross PnL pos * asset_return is > 0; 0 if never in."""
    positions = np.asarray(positions, dtype=np.float64)
    gross = positions * np.asarray(asset_returns, dtype=np.float64)
    in_market = positions != 0
    return _ratio(float(np.count_nonzero(gross[in_market] > 0)), float(np.count_nonzero(in_market)))


def turnover(positions: np.ndarray, initial_position: float = 0.0) -> float:
    """Mean |pos_t - pos_{t-1}| per bar, counting the first trade from `initial_position`.

    positions (N,) or (N, K) for K instruments held side by side (then also averaged over instruments, which is
    the turnover of an equal-weight portfolio of them).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if not positions.size:
        return 0.0
    return float(np.abs(np.diff(positions, axis=0, prepend=np.full_like(positions[:1], initial_position))).mean())


def exposure(positions: np.ndarray) -> float:
    """Mean |pos_t|: 1.0 = always fully invested (long or short), 0.0 = always flat."""
    positions = np.asarray(positions, dtype=np.float64)
    return float(np.abs(positions).mean()) if positions.size else 0.0


def trading_metrics(
    returns: np.ndarray, positions: np.ndarray, asset_returns: np.ndarray, periods_per_year: float
) -> dict:
    """All trading metrics of one strategy (see the module docstring for the formulas).

    returns: (N,) net per-bar strategy returns; positions: (N,) held over those bars, or (N, K) for an
    equal-weight portfolio of K instruments; asset_returns: same shape as positions, the simple return of each
    instrument over those bars (for the hit rate, counted over every (bar, instrument) in the market).
    """
    return {
        "total_return": total_return(returns),
        "annualised_return": annualised_return(returns, periods_per_year),
        "sharpe": sharpe_ratio(returns, periods_per_year),
        "sortino": sortino_ratio(returns, periods_per_year),
        "max_drawdown": max_drawdown(returns),
        "hit_rate": hit_rate(positions, asset_returns),
        "turnover": turnover(positions),
        "exposure": exposure(positions),
        "pnl": float(np.sum(returns)),
        "n_bars": int(np.asarray(returns).size),
    }
