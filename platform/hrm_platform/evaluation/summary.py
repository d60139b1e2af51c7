"""The figures of one backtest record with their uncertainty: per strategy the trading metrics, the Sharpe
interval and the model's paired Sharpe lead over it; per trained model the information coefficients.

One record is a single test split, one walk-forward fold, or the folds pooled (`pool_results`): the K test
periods are consecutive and disjoint, so their per-bar portfolio returns concatenate into one out-of-sample
series, and their decisions into one set of (score, forward return) pairs.

    stats = backtest_statistics(result, BootstrapSettings.from_config(config.eval))
    stats["portfolio"]["model"]["sharpe_ci"]        # [low, high]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrm_platform.actions import signed_score
from hrm_platform.evaluation.backtest import BacktestResult, InstrumentBacktest, ModelDecisions, StrategyRun
from hrm_platform.evaluation.uncertainty import BootstrapSettings, information_coefficients, strategy_intervals

# Report order: the model, the same model after 1 and after all M segments, the trained baselines, the
# oracle, the rules.
MODEL_ACT_VARIANTS = ("model_1_segment", "model_all_segments")
ACT_GAIN_EPSILON = 0.005  # accuracy (fraction) and IC gains this small count as none
STRATEGY_ORDER = ("model", *MODEL_ACT_VARIANTS, "lightgbm", "mlp", "transformer", "oracle", "buy_and_hold",
                  "momentum", "flat")


def ordered(by_strategy: dict[str, Any]) -> dict[str, Any]:
    return {name: by_strategy[name] for name in STRATEGY_ORDER if name in by_strategy}


def portfolio_statistics(
    portfolio: InstrumentBacktest, periods_per_year: float, settings: BootstrapSettings
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """(strategy -> trading metrics + `sharpe_ci` + `sharpe_lead_of_model` interval (not for the model),
    how the bootstrap resampled: block length, resamples, confidence)."""
    table = portfolio.strategy_metrics(periods_per_year)
    returns = {name: run.returns for name, run in portfolio.runs.items()}
    intervals = strategy_intervals(returns, "model", periods_per_year, settings)
    for name, row in table.items():
        row["sharpe_ci"] = [intervals.sharpe[name].low, intervals.sharpe[name].high]
        if name in intervals.difference:
            row["sharpe_lead_of_model"] = intervals.difference[name].to_dict()
    bootstrap = {"block_length": intervals.block_length, "resamples": intervals.resamples,
                 "confidence": settings.confidence}
    return ordered(table), bootstrap


def ic_statistics(result: BacktestResult, settings: BootstrapSettings) -> dict[str, dict[str, Any]]:
    """trained model (and the oracle's expectation) -> IC and rank IC with intervals and t-statistics."""
    forward = np.concatenate([result.forward_returns[symbol] for symbol in result.decisions])
    scores = {name: _scores(by_symbol) for name, by_symbol in result.trained_decisions().items()}
    if result.oracle_expected:
        scores["oracle"] = np.concatenate([result.oracle_expected[symbol] for symbol in result.decisions])
    return ordered(
        {name: information_coefficients(score, forward, settings).to_dict() for name, score in scores.items()}
    )


def _scores(by_symbol: dict[str, ModelDecisions]) -> np.ndarray:
    return np.concatenate([decisions.score for decisions in by_symbol.values()])


def accuracy_by_model(result: BacktestResult) -> dict[str, float]:
    """Test accuracy of the model and each trained baseline on the same labels."""
    true = np.concatenate([result.true_actions[symbol] for symbol in result.decisions])
    return ordered({
        name: float(np.mean(np.concatenate([d.actions for d in by_symbol.values()]) == true))
        for name, by_symbol in result.trained_decisions().items()
    })


def backtest_statistics(result: BacktestResult, settings: BootstrapSettings) -> dict[str, Any]:
    """Portfolio metrics with Sharpe intervals, ICs and accuracies of one backtest record, and what the
    model's ACT segments earn (`act_statistics`) when its per-segment outputs were recorded."""
    portfolio, bootstrap = portfolio_statistics(result.portfolio, result.periods_per_year, settings)
    return {
        "portfolio": portfolio,
        "bootstrap": bootstrap,
        "information_coefficient": ic_statistics(result, settings),
        "accuracy": accuracy_by_model(result),
        "act": act_statistics(result),
    }


def act_statistics(result: BacktestResult) -> dict[str, Any] | None:
    """Accuracy and IC of the model after each segment (every window run to M), ACT's mean segments, and
    the verdict in words; None when the per-segment outputs were not recorded."""
    decisions = list(result.decisions.values())
    if not decisions or any(d.segment_probabilities is None for d in decisions):
        return None
    by_segment = np.concatenate([d.segment_probabilities for d in decisions])  # (N, M, 3)
    true = np.concatenate([result.true_actions[symbol] for symbol in result.decisions])  # (N,)
    forward = np.concatenate([result.forward_returns[symbol] for symbol in result.decisions])  # (N,)
    curve = [
        {"segment": k + 1, "accuracy": float(np.mean(by_segment[:, k].argmax(-1) == true)),
         "ic": _pearson(signed_score(by_segment[:, k]), forward)}
        for k in range(by_segment.shape[1])
    ]
    segments = np.concatenate([d.segments_used for d in decisions])
    return {"per_segment": curve, "mean_segments": float(segments.mean()), "verdict": act_verdict(curve, segments)}


def act_verdict(curve: list[dict[str, float]], segments_used: np.ndarray) -> str:
    """Whether segments after the first earn anything here, and what ACT made of it."""
    first, last = curve[0], curve[-1]
    gain_accuracy, gain_ic = last["accuracy"] - first["accuracy"], last["ic"] - first["ic"]
    halted_at_one = float(np.mean(segments_used == 1))
    figures = (f"accuracy {first['accuracy']:.3f} after segment 1, {last['accuracy']:.3f} after {len(curve)}; "
               f"IC {first['ic']:+.3f} -> {last['ic']:+.3f}; ACT halted {halted_at_one:.0%} of the windows after one "
               f"segment (mean {segments_used.mean():.2f})")
    if gain_accuracy <= ACT_GAIN_EPSILON and gain_ic <= ACT_GAIN_EPSILON:
        return (f"Later segments earn nothing here ({figures}): halting after one segment is the right answer "
                "for this data.")
    return (f"Later segments earn {gain_accuracy:+.1%} accuracy and {gain_ic:+.3f} IC over the first ({figures}).")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    kept = ~(np.isnan(x) | np.isnan(y))
    if kept.sum() < 3 or np.std(x[kept]) == 0 or np.std(y[kept]) == 0:
        return 0.0
    return float(np.corrcoef(x[kept], y[kept])[0, 1])


def pool_results(results: list[BacktestResult]) -> BacktestResult:
    """The folds' test periods as one out-of-sample record, in fold order (periods must not overlap)."""
    first = results[0]
    portfolios = [result.portfolio for result in results]
    starts = [portfolio.timestamps[0] for portfolio in portfolios]
    if any(later <= earlier for earlier, later in zip(starts, starts[1:])):
        raise ValueError("fold results must come in chronological order")
    pooled = InstrumentBacktest(
        "portfolio",
        portfolios[0].timestamps.append([portfolio.timestamps for portfolio in portfolios[1:]]),
        np.concatenate([portfolio.asset_returns for portfolio in portfolios]),
        runs={
            name: _concatenated_runs([portfolio.runs[name] for portfolio in portfolios])
            for name in first.portfolio.runs
        },
    )
    return BacktestResult(
        instruments=[],
        portfolio=pooled,
        decisions=_concatenated_decisions([result.decisions for result in results]),
        true_actions={s: np.concatenate([r.true_actions[s] for r in results]) for s in first.true_actions},
        periods_per_year=first.periods_per_year,
        baseline_decisions={
            name: _concatenated_decisions([result.baseline_decisions[name] for result in results])
            for name in first.baseline_decisions
        },
        forward_returns={s: np.concatenate([r.forward_returns[s] for r in results]) for s in first.forward_returns},
        oracle_expected={s: np.concatenate([r.oracle_expected[s] for r in results]) for s in first.oracle_expected},
        frequency=first.frequency,
    )


def _concatenated_runs(runs: list[StrategyRun]) -> StrategyRun:
    return StrategyRun(
        positions=np.concatenate([run.positions for run in runs]),
        returns=np.concatenate([run.returns for run in runs]),
        costs=np.concatenate([run.costs for run in runs]),
    )


def _concatenated_decisions(parts: list[dict[str, ModelDecisions]]) -> dict[str, ModelDecisions]:
    return {
        symbol: ModelDecisions(
            positions=np.concatenate([part[symbol].positions for part in parts]),
            actions=np.concatenate([part[symbol].actions for part in parts]),
            probabilities=np.concatenate([part[symbol].probabilities for part in parts]),
            quantity=np.concatenate([part[symbol].quantity for part in parts]),
            segments_used=np.concatenate([part[symbol].segments_used for part in parts]),
            segment_probabilities=_concatenated_optional([part[symbol].segment_probabilities for part in parts]),
        )
        for symbol in parts[0]
    }


def _concatenated_optional(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    return None if any(array is None for array in arrays) else np.concatenate(arrays)
