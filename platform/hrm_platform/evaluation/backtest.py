"""Backtest a checkpoint on held-out time against baselines, on the same bars and costs.

    hrm evaluate --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --out artifacts/eval [--data bars.csv]

Timing (no look-ahead). The decision at bar t uses only the window ending at bar t (features are causal and
normalised with the statistics stored in the checkpoint, fitted on the training split). The position set at
t is held from the close of t to the close of t+1 and earns

    r_t = pos_t * (close[t+1] / close[t] - 1) - cost_bps / 1e4 * |pos_t - pos_{t-1}|

with pos_{-1} = 0 (the backtest starts flat). A position is direction * quantity: buy +1, sell -1, hold 0
(the argmax of the model's action probabilities) times the model's quantity in [0, 1].

Horizon vs holding. Labels say whether the next `data.horizon` bars drift past a threshold; the backtest does
not hold for `horizon` bars. It re-decides every bar and holds one bar: the decision at t+1 sees strictly
more information than the one at t, overlapping labels make consecutive decisions agree most of the time,
and every change that does happen pays its cost, so churn is charged, not hidden. Every strategy below is
run with this same one-bar holding, so the comparison is like for like.

Baselines (same bars, same costs, same timing):
- trained (`eval.baselines`, fitted on the same split's train and val windows and labels: `baselines/`):
  lightgbm, mlp, transformer. Their positions come from their outputs exactly as the model's do.
- flat: pos_t = 0.
- buy_and_hold: pos_t = 1 (pays one entry cost).
- momentum: pos_t = sign(log(close[t] / close[t - L])), L = eval.momentum_lookback.
- oracle (synthetic data only): the generator's E[log(close[t+h]/close[t]) | state at t] is known; the oracle
  goes full size long or short by its sign when |E| beats a round trip's cost, flat otherwise (see
  `oracle_positions`). It is a reference for "how much of the predictable PnL did the model capture", not an
  upper bound on any single path. (Sizing it like the labels, by (|E| - threshold) / scale, would leave it
  almost always flat: the expected h-bar move is mostly below the label threshold, which realised noise
  crosses.)

The portfolio is equal weight across instruments, rebalanced every bar: its return at a timestamp is the mean
of the instruments' net returns there (positions are fractions of each instrument's 1/K sleeve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hrm_platform.actions import signed_score, target_positions
from hrm_platform.data.features import FeatureSpec, compute_features
from hrm_platform.evaluation import metrics

if TYPE_CHECKING:
    import torch

    from hrm_platform.data.dataset import DatasetBundle
    from hrm_platform.data.frequency import BarFrequency

INFERENCE_BATCH = 512


@dataclass(frozen=True)
class Prediction:
    """What a model says about N windows: probabilities (N, 3), quantity (N,) in [0, 1], the ACT segments
    each used (N,) int64 (None for a model without ACT), and the probabilities after every segment
    (N, M, 3), when the model records them (the HRM does: the report's accuracy and IC per segment)."""

    probabilities: np.ndarray
    quantity: np.ndarray
    segments_used: np.ndarray | None = None
    segment_probabilities: np.ndarray | None = None


WindowPredictor = Callable[[np.ndarray], Prediction]  # windows (N, W, F) float32 -> Prediction


@dataclass(frozen=True)
class ModelDecisions:
    """A model's output for N decision bars (t in ascending order)."""

    positions: np.ndarray  # (N,) float64 in [-1, 1]
    actions: np.ndarray  # (N,) int64 argmax action id
    probabilities: np.ndarray  # (N, 3) float32
    quantity: np.ndarray  # (N,) float32 in [0, 1]
    segments_used: np.ndarray  # (N,) int64 in 1..max_segments (1 for a model without ACT)
    segment_probabilities: np.ndarray | None = None  # (N, M, 3) after each segment, all run (no halting)

    @property
    def score(self) -> np.ndarray:
        """(N,) p(buy) - p(sell): the signed conviction the information coefficient correlates."""
        return signed_score(self.probabilities)


@dataclass
class StrategyRun:
    """One strategy on one instrument (or the portfolio): positions held over each bar and net returns."""

    positions: np.ndarray  # (N,) or (N, K) for the portfolio
    returns: np.ndarray  # (N,) net simple returns
    costs: np.ndarray  # (N,) cost paid at each bar (already subtracted from returns)


@dataclass
class InstrumentBacktest:
    symbol: str
    timestamps: pd.DatetimeIndex  # (N,) decision bars t
    asset_returns: np.ndarray  # (N,) or (N, K): close[t+1] / close[t] - 1
    runs: dict[str, StrategyRun] = field(default_factory=dict)

    def strategy_metrics(self, periods_per_year: float) -> dict[str, dict]:
        return {
            name: metrics.trading_metrics(run.returns, run.positions, self.asset_returns, periods_per_year)
            for name, run in self.runs.items()
        }


# --- positions ------------------------------------------------------------------------------------------------


def positions_from_outputs(probabilities: np.ndarray, quantity: np.ndarray) -> np.ndarray:
    """(N, 3) action probabilities and (N,) quantity -> (N,) signed positions: direction of argmax * quantity."""
    return target_positions(np.asarray(probabilities).argmax(axis=1), quantity)


def normalised_features(bars: np.ndarray, feature_spec: FeatureSpec) -> np.ndarray:
    """(T, 5) raw OHLCV -> (T, F) float32 features normalised with the checkpoint's statistics.

    compute_features is causal (row t uses bars <= t), so row t never sees a later bar.
    """
    return feature_spec.stats.apply(compute_features(bars))


def windows_ending_at(features: np.ndarray, end_bars: np.ndarray, window: int) -> np.ndarray:
    """(T, F) features, (N,) end bars -> (N, W, F) windows of rows end-W+1 .. end (the end row included)."""
    end_bars = np.asarray(end_bars, dtype=np.int64)
    if end_bars.size and (end_bars.min() < window - 1 or end_bars.max() >= len(features)):
        raise ValueError(f"window ends must lie in [{window - 1}, {len(features) - 1}]")
    offsets = np.arange(-window + 1, 1)  # (W,)
    return features[end_bars[:, None] + offsets[None, :]]  # (N, W, F)


def hrm_predictor(
    model: torch.nn.Module, max_segments: int | None = None, use_halting: bool = True, per_segment: bool = False
) -> WindowPredictor:
    """The HRM's ACT inference (eager, CPU) as a WindowPredictor: halting as served, or (`use_halting=False`)
    every window run to `max_segments`; `per_segment` also records the probabilities after each segment."""

    def predict_windows(windows: np.ndarray) -> Prediction:
        import torch

        from hrm_platform.model.act import outputs_per_segment, predict
        from hrm_platform.model.hrm import unwrap_model

        inputs = torch.from_numpy(np.ascontiguousarray(windows))
        result = predict(model, inputs, max_segments=max_segments, use_halting=use_halting)
        by_segment = None
        if per_segment:  # (N, M, 3): every segment run, none halted
            outputs = outputs_per_segment(model, inputs, max_segments or unwrap_model(model).config.max_segments)
            by_segment = torch.stack([torch.softmax(o.action_logits.float(), -1) for o in outputs], 1).numpy()
        return Prediction(result.probabilities.numpy(), result.quantity.numpy(), result.segments_used.numpy(),
                          by_segment)

    return predict_windows


def model_decisions(
    model: torch.nn.Module,
    bars: np.ndarray,
    end_bars: np.ndarray,
    feature_spec: FeatureSpec,
    max_segments: int | None = None,
    batch_size: int = INFERENCE_BATCH,
) -> ModelDecisions:
    """The HRM's decisions at each of `end_bars` from the raw bars (T, 5), in batches of ACT inference."""
    return decisions_from_bars(hrm_predictor(model, max_segments), bars, end_bars, feature_spec, batch_size)


def decisions_from_bars(
    predictor: WindowPredictor,
    bars: np.ndarray,
    end_bars: np.ndarray,
    feature_spec: FeatureSpec,
    batch_size: int = INFERENCE_BATCH,
) -> ModelDecisions:
    """Decisions at each of `end_bars` from the raw bars (T, 5), `batch_size` windows at a time.

    Decision t is a function of bars[: t + 1] only (causal features, a window that ends at t).
    """
    features = normalised_features(bars, feature_spec)  # (T, F)
    parts = [
        predictor(windows_ending_at(features, end_bars[start : start + batch_size], feature_spec.window))
        for start in range(0, len(end_bars), batch_size)
    ]
    probabilities = np.concatenate([p.probabilities for p in parts]) if parts else np.zeros((0, 3), np.float32)
    quantity = np.concatenate([p.quantity for p in parts]) if parts else np.zeros(0, np.float32)
    segments = [np.ones(len(p.quantity), np.int64) if p.segments_used is None else p.segments_used for p in parts]
    recorded = parts and all(p.segment_probabilities is not None for p in parts)
    return ModelDecisions(
        positions=positions_from_outputs(probabilities, quantity),
        actions=probabilities.argmax(axis=1).astype(np.int64),
        probabilities=probabilities,
        quantity=quantity,
        segments_used=np.concatenate(segments).astype(np.int64) if parts else np.zeros(0, np.int64),
        segment_probabilities=np.concatenate([p.segment_probabilities for p in parts]) if recorded else None,
    )


def momentum_positions(close: np.ndarray, end_bars: np.ndarray, lookback: int) -> np.ndarray:
    """sign(log(close[t] / close[t - lookback])) at each decision bar t (0 when there is no history yet)."""
    end_bars = np.asarray(end_bars, dtype=np.int64)
    past = end_bars - lookback
    signal = np.zeros(len(end_bars))
    has_history = past >= 0
    signal[has_history] = np.sign(np.log(close[end_bars[has_history]] / close[past[has_history]]))
    return signal


def oracle_positions(expected_log_return: np.ndarray, end_bars: np.ndarray, cost_bps: float) -> np.ndarray:
    """Long/short by the sign of the generator's expected h-bar log return when it beats a round trip.

    Sizing: full size when |E| exceeds the round-trip cost (2 * cost_bps / 1e4) over the horizon, flat
    otherwise. The expectation is over the generator's state at t only (no realised future), so the oracle
    is causal in the generator's own information set. NaN expectations (past the end) are flat.
    """
    expected = np.asarray(expected_log_return, dtype=np.float64)[np.asarray(end_bars, dtype=np.int64)]
    round_trip = 2.0 * cost_bps / 1e4
    worth_trading = np.nan_to_num(np.abs(expected), nan=0.0) > round_trip
    return np.where(worth_trading, np.sign(np.nan_to_num(expected)), 0.0)


# --- returns --------------------------------------------------------------------------------------------------


def next_bar_returns(close: np.ndarray, end_bars: np.ndarray) -> np.ndarray:
    """(N,) simple return from close[t] to close[t+1] for each decision bar t (t+1 must exist)."""
    end_bars = np.asarray(end_bars, dtype=np.int64)
    if end_bars.size and end_bars.max() + 1 >= len(close):
        raise ValueError(f"decision bar {end_bars.max()} has no next bar (series has {len(close)} bars)")
    return close[end_bars + 1] / close[end_bars] - 1.0


def run_strategy(positions: np.ndarray, asset_returns: np.ndarray, cost_bps: float) -> StrategyRun:
    """Net returns of holding positions[t] over bar t -> t+1, paying cost_bps per unit of position change."""
    positions = np.asarray(positions, dtype=np.float64)
    trades = np.abs(np.diff(positions, prepend=0.0))  # |pos_t - pos_{t-1}|, starting flat
    costs = cost_bps / 1e4 * trades
    return StrategyRun(positions=positions, returns=positions * asset_returns - costs, costs=costs)


def backtest_instrument(
    symbol: str,
    frame: pd.DataFrame,
    end_bars: np.ndarray,
    model_positions: np.ndarray | dict[str, np.ndarray],
    *,
    cost_bps: float,
    momentum_lookback: int,
    oracle: np.ndarray | None = None,
) -> InstrumentBacktest:
    """Trained models (`model_positions`: the model's (N,) positions, or name -> positions for the model and
    the trained baselines) and the rule baselines on one instrument's decision bars (ascending, consecutive)."""
    close = frame["close"].to_numpy(dtype=np.float64)
    asset_returns = next_bar_returns(close, end_bars)
    trained = model_positions if isinstance(model_positions, dict) else {"model": model_positions}
    candidates = {
        **trained,
        "buy_and_hold": np.ones(len(end_bars)),
        "momentum": momentum_positions(close, end_bars, momentum_lookback),
        "flat": np.zeros(len(end_bars)),
    }
    if oracle is not None:
        candidates["oracle"] = oracle
    return InstrumentBacktest(
        symbol=symbol,
        timestamps=frame.index[end_bars],
        asset_returns=asset_returns,
        runs={name: run_strategy(positions, asset_returns, cost_bps) for name, positions in candidates.items()},
    )


def equal_weight_portfolio(instruments: list[InstrumentBacktest]) -> InstrumentBacktest:
    """Mean of the instruments' net returns at each timestamp (instruments absent at a time are left out).

    Positions and asset returns become (N, K) with 0 where an instrument has no bar, so that exposure and
    turnover are those of the equal-weight book.
    """
    timestamps = instruments[0].timestamps
    for item in instruments[1:]:
        timestamps = timestamps.union(item.timestamps)

    def aligned(values_of) -> pd.DataFrame:
        return pd.DataFrame({item.symbol: pd.Series(values_of(item), index=item.timestamps) for item in instruments},
                            index=timestamps)

    asset = aligned(lambda item: item.asset_returns)
    portfolio = InstrumentBacktest("portfolio", timestamps, asset.fillna(0.0).to_numpy())
    for name in instruments[0].runs:
        returns = aligned(lambda item: item.runs[name].returns)
        positions = aligned(lambda item: item.runs[name].positions)
        costs = aligned(lambda item: item.runs[name].costs)
        portfolio.runs[name] = StrategyRun(
            positions=positions.fillna(0.0).to_numpy(),
            returns=returns.mean(axis=1, skipna=True).to_numpy(),
            costs=costs.mean(axis=1, skipna=True).to_numpy(),
        )
    return portfolio


# --- the whole evaluation -------------------------------------------------------------------------------------


@dataclass
class BacktestResult:
    """Everything the report needs: per-instrument runs, the portfolio, and the trained models' decisions."""

    instruments: list[InstrumentBacktest]
    portfolio: InstrumentBacktest
    decisions: dict[str, ModelDecisions]  # symbol -> the model's decisions at its test bars
    true_actions: dict[str, np.ndarray]  # symbol -> (N,) label ids at the same bars
    periods_per_year: float
    baseline_decisions: dict[str, dict[str, ModelDecisions]] = field(default_factory=dict)  # name -> symbol -> ...
    forward_returns: dict[str, np.ndarray] = field(default_factory=dict)  # symbol -> (N,) realised h-bar log return
    oracle_expected: dict[str, np.ndarray] = field(default_factory=dict)  # symbol -> (N,) E[h-bar log return]
    frequency: BarFrequency | None = None  # the bar frequency periods_per_year came from
    # symbol -> last bar a train or val label reads (end + horizon), and first bar a test window reads (end - W + 1)
    train_last_bar: dict[str, int] = field(default_factory=dict)
    test_first_bar: dict[str, int] = field(default_factory=dict)

    def trained_decisions(self) -> dict[str, dict[str, ModelDecisions]]:
        """strategy -> symbol -> decisions, the model first, then the trained baselines."""
        return {"model": self.decisions, **self.baseline_decisions}


def decision_bars_by_instrument(test_index: np.ndarray) -> dict[int, np.ndarray]:
    """Test WindowDataset index (N, 2) of (instrument, end_t) -> instrument id -> ascending end bars."""
    index = np.asarray(test_index, dtype=np.int64)
    return {int(k): np.sort(index[index[:, 0] == k, 1]) for k in np.unique(index[:, 0])}


def run_backtest(
    predictors: dict[str, WindowPredictor],
    bundle: DatasetBundle,
    feature_spec: FeatureSpec,
    *,
    cost_bps: float,
    momentum_lookback: int,
) -> BacktestResult:
    """The trained models (`predictors`: "model" and any trained baselines) and the rule baselines on every
    instrument's test bars, then the equal-weight portfolio; annualised at the bundle's bar frequency."""
    if "model" not in predictors:
        raise ValueError(f"predictors must include 'model'; got {sorted(predictors)}")
    instruments, true_actions, forward, expected, train_last, test_first = [], {}, {}, {}, {}, {}
    decided: dict[str, dict[str, ModelDecisions]] = {name: {} for name in predictors}
    for instrument, end_bars in decision_bars_by_instrument(bundle.test.index).items():
        symbol = bundle.symbols[instrument]
        frame = bundle.bars[symbol]
        bars = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)
        for name, predictor in predictors.items():
            decided[name][symbol] = decisions_from_bars(predictor, bars, end_bars, feature_spec)
        oracle = None
        if bundle.market is not None:
            expected[symbol] = bundle.market.expected_log_return[symbol][end_bars]
            oracle = oracle_positions(bundle.market.expected_log_return[symbol], end_bars, cost_bps)
        instruments.append(backtest_instrument(
            symbol, frame, end_bars, {name: by_symbol[symbol].positions for name, by_symbol in decided.items()},
            cost_bps=cost_bps, momentum_lookback=momentum_lookback, oracle=oracle,
        ))
        true_actions[symbol] = bundle.test.actions[instrument][end_bars]
        forward[symbol] = bundle.forward_log_return[symbol][end_bars]
        train_last[symbol], test_first[symbol] = _split_edges(bundle, symbol, int(end_bars[0]))
    model_decided = decided.pop("model")
    return BacktestResult(
        instruments=instruments,
        portfolio=equal_weight_portfolio(instruments),
        decisions=model_decided,
        true_actions=true_actions,
        periods_per_year=bundle.bars_per_year,
        baseline_decisions=decided,
        forward_returns=forward,
        oracle_expected=expected,
        frequency=bundle.frequency,
        train_last_bar=train_last,
        test_first_bar=test_first,
    )


def _split_edges(bundle: DatasetBundle, symbol: str, first_test_end: int) -> tuple[int, int]:
    """(last bar a train/val label reads, first bar a test window reads) of one instrument."""
    ranges = bundle.split_ends[symbol]
    last_end = max(stop - 1 for name, (start, stop) in ranges.items() if name != "test" and stop > start)
    return last_end + bundle.config.horizon, first_test_end - bundle.config.window + 1
