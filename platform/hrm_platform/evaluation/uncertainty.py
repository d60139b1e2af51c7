"""How sure we are of an evaluation figure: stationary block bootstrap intervals, paired across strategies.

One backtest period is one draw of history. A Sharpe of 1.2 over a few thousand bars may be luck, so every
headline figure gets a percentile confidence interval from a stationary bootstrap (Politis & Romano 1994):
resamples are stitched from blocks of consecutive bars with geometric lengths, which keeps the short-range
dependence of bar returns that an iid bootstrap would destroy (and would then report intervals too narrow).

The resamples are drawn once, as indices into the bars, and applied to every strategy. Model and baseline are
then judged on the same resampled bars, so the interval of their Sharpe difference is paired: the market
noise they share cancels, and a small but steady edge can be told apart from zero.

    settings = BootstrapSettings.from_config(config.eval)
    intervals = strategy_intervals({"model": r_model, "buy_and_hold": r_bh}, "model", bars_per_year, settings)
    print(interval_words("model Sharpe", intervals.sharpe["model"]))

Index generation and the block-length rule come from `arch.bootstrap`; this module only turns index sets into
statistics, vectorised over resamples. A resample is summarised by how many times it drew each bar
(`counts`, (R, N)): every statistic here (mean, std, correlation, ranks) is a weighted sum over the
original bars, so chunks of a counts matrix replace an (R, N) copy of each series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length
from scipy.stats import rankdata

from hrm_platform.config import EvalConfig
from hrm_platform.evaluation.metrics import sharpe_ratio

# A chunk of resamples is materialised as a few (rows, N) float64 arrays; ~2M elements keeps each near 16 MB.
_ELEMENTS_PER_CHUNK = 2**21
# The zero-variance threshold of metrics.sharpe_ratio, so resampled Sharpes follow the same convention.
_ZERO_STD = 1e-15


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are drawn; built from `EvalConfig`, where the defaults live."""

    confidence: float  # level of every interval, e.g. 0.95
    resamples: int  # R, the number of bootstrap resamples
    block: float | None  # mean block length in bars; None = Politis-White's optimal length for the series
    seed: int  # seeds the resampling, so a report is reproducible

    @classmethod
    def from_config(cls, eval_config: EvalConfig) -> BootstrapSettings:
        return cls(
            confidence=eval_config.confidence,
            resamples=eval_config.bootstrap_resamples,
            block=eval_config.bootstrap_block,
            seed=eval_config.bootstrap_seed,
        )


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval [low, high] at `level`."""

    estimate: float
    low: float
    high: float
    level: float

    @property
    def spans_zero(self) -> bool:
        """True when zero is a plausible value: the data cannot tell the figure from nothing."""
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "spans_zero": self.spans_zero,
        }


@dataclass(frozen=True)
class StrategyIntervals:
    """Sharpe intervals of every strategy, and the reference's paired Sharpe lead over each other one."""

    reference: str
    sharpe: dict[str, Interval]  # strategy -> interval of its annualised Sharpe
    difference: dict[str, Interval]  # other strategy -> interval of Sharpe(reference) - Sharpe(other)
    block_length: float  # mean block length the resamples used, in bars
    resamples: int

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "sharpe": {name: interval.to_dict() for name, interval in self.sharpe.items()},
            "sharpe_difference": {name: interval.to_dict() for name, interval in self.difference.items()},
            "block_length": self.block_length,
            "resamples": self.resamples,
        }


@dataclass(frozen=True)
class InformationCoefficients:
    """Correlation between a signed score and the forward return it should predict, with its uncertainty."""

    pearson: Interval  # linear IC
    pearson_t: float  # pearson.estimate / bootstrap standard error
    rank: Interval  # Spearman rank IC: blind to monotone rescaling of the score, robust to outliers
    rank_t: float
    n: int  # pairs used
    n_dropped: int  # pairs dropped because the score or the forward return was NaN
    block_length: float

    def to_dict(self) -> dict:
        return {
            "pearson": {**self.pearson.to_dict(), "t_stat": self.pearson_t},
            "rank": {**self.rank.to_dict(), "t_stat": self.rank_t},
            "n": self.n,
            "n_dropped": self.n_dropped,
            "block_length": self.block_length,
        }


# --- the resamples --------------------------------------------------------------------------------------------


def block_length(settings: BootstrapSettings, series: np.ndarray) -> float:
    """Mean block length in bars: `settings.block` if set, else Politis-White's for `series`, within [1, N].

    Politis & White (2004; corrected by Patton, Politis & White 2009; arch implements it) pick the length
    that balances the bias of cutting dependence at block edges against the variance of few blocks. On
    nearly independent returns their estimate falls below one bar; it is floored at 1, which is the iid
    bootstrap (every bar starts a new block), the right limit for data without memory. A constant series
    has no dependence to keep, so it gets 1 as well (arch would return NaN for it).
    """
    if settings.block is not None:
        return float(settings.block)
    series = np.asarray(series, dtype=np.float64)
    if series.size < 2 or series.std() <= _ZERO_STD:
        return 1.0
    optimal = float(optimal_block_length(series)["stationary"].iloc[0])
    return float(np.clip(optimal, 1.0, series.size)) if math.isfinite(optimal) else 1.0


def resample_indices(n: int, settings: BootstrapSettings, series_for_block_length: np.ndarray) -> np.ndarray:
    """(R, n) int64 stationary-bootstrap resamples of range(n), R = settings.resamples, the same for a seed.

    Draw them once and index every strategy with them, so comparisons are paired. `series_for_block_length`
    (e.g. the model's returns) only sets the block length when `settings.block` is None.
    """
    return _draw_indices(n, block_length(settings, series_for_block_length), settings)


def _draw_indices(n: int, mean_block: float, settings: BootstrapSettings) -> np.ndarray:
    """(R, n) int64 resamples with the given mean block length; arch draws one resample per call."""
    # The data handed to arch is range(n) itself, so its index array is the resampled positions. A float
    # block length is fine: the stationary bootstrap only uses 1 / block, the chance of starting a new block.
    bootstrap = StationaryBootstrap(mean_block, np.arange(n), seed=settings.seed)
    indices = np.empty((settings.resamples, n), dtype=np.int64)
    for row in range(settings.resamples):
        indices[row] = bootstrap.update_indices()
    return indices


def _counts_in_chunks(indices: np.ndarray) -> Iterator[np.ndarray]:
    """Yields (rows, n) float64: how many times each resample in a chunk drew each original sample."""
    n_resamples, n = indices.shape
    rows_per_chunk = max(1, _ELEMENTS_PER_CHUNK // max(n, 1))
    for start in range(0, n_resamples, rows_per_chunk):
        chunk = indices[start : start + rows_per_chunk]  # (rows, n)
        flat = (chunk + n * np.arange(len(chunk))[:, None]).ravel()  # row r's draws land in [r*n, (r+1)*n)
        yield np.bincount(flat, minlength=chunk.size).reshape(chunk.shape).astype(np.float64)


def _over_resamples(indices: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(R, ...) `statistic(counts)` of every resample, computed chunk by chunk to bound memory."""
    return np.concatenate([statistic(counts) for counts in _counts_in_chunks(indices)], axis=0)


def _percentile_interval(estimate: float, resampled: np.ndarray, confidence: float) -> Interval:
    low, high = np.quantile(resampled, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return Interval(estimate=float(estimate), low=float(low), high=float(high), level=float(confidence))


# --- Sharpe ---------------------------------------------------------------------------------------------------


def _resampled_sharpes(returns: np.ndarray, periods_per_year: float, indices: np.ndarray) -> np.ndarray:
    """(R, K) annualised Sharpe of K aligned return series (n, K) on every resample; metrics.sharpe_ratio's formula.

    Sums are taken about the full-sample mean, so the one-pass variance loses no precision to cancellation.
    """
    n = returns.shape[0]
    if n < 2:  # metrics.sharpe_ratio's convention: no spread can be measured, so 0
        return np.zeros((indices.shape[0], returns.shape[1]))
    full_mean = returns.mean(axis=0)  # (K,)
    centred = returns - full_mean  # (n, K)
    moments = np.concatenate([centred, centred**2], axis=1)  # (n, 2K): first and second powers

    def sharpes(counts: np.ndarray) -> np.ndarray:
        sums = counts @ moments  # (rows, 2K)
        first, second = np.split(sums, 2, axis=1)  # (rows, K) each
        std = np.sqrt(np.maximum(second - first**2 / n, 0.0) / (n - 1))
        safe_std = np.where(std > _ZERO_STD, std, 1.0)
        return np.where(std > _ZERO_STD, (full_mean + first / n) / safe_std, 0.0) * np.sqrt(periods_per_year)

    return _over_resamples(indices, sharpes)


def _as_columns(*series: np.ndarray) -> np.ndarray:
    """(n, K) float64 from K aligned (n,) series; refuses series of different lengths."""
    lengths = {np.asarray(one).shape for one in series}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"return series must be aligned 1-D arrays of one length, got shapes {sorted(lengths)}")
    return np.stack([np.asarray(one, dtype=np.float64) for one in series], axis=1)


def _check_indices(indices: np.ndarray, n: int) -> None:
    if indices.ndim != 2 or indices.shape[1] != n:
        raise ValueError(f"indices must be (resamples, {n}) for {n} bars, got {indices.shape}")


def sharpe_interval(returns: np.ndarray, periods_per_year: float, indices: np.ndarray, confidence: float) -> Interval:
    """Percentile interval of the annualised Sharpe of `returns` (n,) over the resamples `indices` (R, n)."""
    columns = _as_columns(returns)
    _check_indices(indices, columns.shape[0])
    resampled = _resampled_sharpes(columns, periods_per_year, indices)[:, 0]  # (R,)
    return _percentile_interval(sharpe_ratio(columns[:, 0], periods_per_year), resampled, confidence)


def sharpe_difference_interval(
    returns_a: np.ndarray, returns_b: np.ndarray, periods_per_year: float, indices: np.ndarray, confidence: float
) -> Interval:
    """Interval of Sharpe(a) - Sharpe(b), both measured on the same resampled bars (paired)."""
    columns = _as_columns(returns_a, returns_b)
    _check_indices(indices, columns.shape[0])
    resampled = _resampled_sharpes(columns, periods_per_year, indices)  # (R, 2)
    estimate = sharpe_ratio(columns[:, 0], periods_per_year) - sharpe_ratio(columns[:, 1], periods_per_year)
    return _percentile_interval(estimate, resampled[:, 0] - resampled[:, 1], confidence)


def strategy_intervals(
    returns_by_strategy: dict[str, np.ndarray], reference: str, periods_per_year: float, settings: BootstrapSettings
) -> StrategyIntervals:
    """Sharpe interval of every strategy, and Sharpe(reference) - Sharpe(other) for every other one.

    returns_by_strategy: name -> (N,) net per-bar returns, aligned in time. One index set serves every
    strategy, its block length chosen on the reference's returns (the series whose figures are in question).
    """
    if reference not in returns_by_strategy:
        raise ValueError(f"reference {reference!r} is not among the strategies {sorted(returns_by_strategy)}")
    names = list(returns_by_strategy)
    columns = _as_columns(*returns_by_strategy.values())  # (N, K)
    mean_block = block_length(settings, returns_by_strategy[reference])
    indices = _draw_indices(columns.shape[0], mean_block, settings)
    resampled = _resampled_sharpes(columns, periods_per_year, indices)  # (R, K)
    estimates = np.array([sharpe_ratio(columns[:, k], periods_per_year) for k in range(len(names))])  # (K,)
    leads = estimates[names.index(reference)] - estimates  # (K,) Sharpe(reference) - Sharpe(k)
    resampled_leads = resampled[:, [names.index(reference)]] - resampled  # (R, K), paired per resample
    sharpe = {
        name: _percentile_interval(estimates[k], resampled[:, k], settings.confidence) for k, name in enumerate(names)
    }
    difference = {
        name: _percentile_interval(leads[k], resampled_leads[:, k], settings.confidence)
        for k, name in enumerate(names)
        if name != reference
    }
    return StrategyIntervals(reference, sharpe, difference, mean_block, settings.resamples)


# --- information coefficient ----------------------------------------------------------------------------------


def _weighted_correlation(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(rows,) Pearson correlation of x and y under each row of weights (rows, n); x, y are (n,) or (rows, n).

    A row where either side has no variance gets 0 (no linear relation can be measured there).
    """
    total = weights.sum(axis=1, keepdims=True)  # (rows, 1), = n for bootstrap counts
    x_dev = x - (weights * x).sum(axis=1, keepdims=True) / total  # (rows, n)
    y_dev = y - (weights * y).sum(axis=1, keepdims=True) / total
    covariance = (weights * x_dev * y_dev).sum(axis=1)
    variance_product = (weights * x_dev**2).sum(axis=1) * (weights * y_dev**2).sum(axis=1)
    measurable = variance_product > 0
    return np.where(measurable, covariance / np.sqrt(np.where(measurable, variance_product, 1.0)), 0.0)


def _resampled_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(rows, n) rank of each original sample inside each resample, as rankdata(values[resample]) gives it.

    Ranks are 1-based with ties averaged; a sample drawn c times, after `before` smaller draws, holds ranks
    before+1 .. before+c, so its average rank is before + (c + 1) / 2. Equal values form one group.
    Samples a resample did not draw get a rank too, but their weight (count 0) removes them.
    """
    order = np.argsort(values, kind="stable")  # (n,)
    sorted_values = values[order]
    starts_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]  # (n,) True at each new value
    group_of_sorted = np.cumsum(starts_group) - 1  # (n,) group id per sorted position
    group_counts = np.add.reduceat(counts[:, order], np.flatnonzero(starts_group), axis=1)  # (rows, G)
    group_ranks = np.cumsum(group_counts, axis=1) - group_counts + (group_counts + 1.0) / 2.0  # (rows, G)
    ranks = np.empty_like(counts)
    ranks[:, order] = group_ranks[:, group_of_sorted]
    return ranks


def _t_statistic(estimate: float, resampled: np.ndarray) -> float:
    """estimate / bootstrap standard error; +-inf when every resample agrees on a non-zero value."""
    standard_error = float(resampled.std(ddof=1))
    if standard_error > 0:
        return estimate / standard_error
    return math.copysign(math.inf, estimate) if estimate else 0.0


def _dependence_proxy(score: np.ndarray, forward_return: np.ndarray) -> np.ndarray:
    """(n,) product of centred ranks: the series whose mean is (up to scale) the rank correlation.

    Its autocorrelation is what makes the correlation's sampling error larger than iid, so its Politis-White
    length is the block length. Ranks keep the choice, and so the rank IC, unchanged by a monotone transform
    of the score, and keep one outlier from stretching the blocks.
    """
    return (rankdata(score) - (score.size + 1) / 2.0) * (rankdata(forward_return) - (score.size + 1) / 2.0)


def information_coefficients(
    score: np.ndarray, forward_return: np.ndarray, settings: BootstrapSettings
) -> InformationCoefficients:
    """Pearson and rank (Spearman) IC between a signed score (N,) and the forward return (N,) it predicts.

    Pairs where either side is NaN (e.g. the last h bars, whose h-bar forward return is unknown) are dropped
    first; the function then draws its own resamples over the n kept pairs, which is why it takes the
    settings rather than a shared index set. The block length is `settings.block` or Politis-White's for
    `_dependence_proxy`.

    The t-statistic is estimate / bootstrap standard error, not the iid formula r * sqrt((n - 2) / (1 - r^2)):
    the h-bar forward returns of neighbouring bars share h - 1 bars, so neighbouring pairs are dependent, and
    the iid formula would count n dependent pairs as n independent ones and overstate the evidence. The block
    bootstrap resamples whole runs of bars, so it keeps that overlap in the standard error.
    """
    score, forward_return = _as_columns(score, forward_return).T  # (N,) each
    kept = ~(np.isnan(score) | np.isnan(forward_return))
    score, forward_return = score[kept], forward_return[kept]  # (n,) each
    if score.size < 3:
        raise ValueError(f"information coefficient needs at least 3 pairs without NaN, got {score.size}")
    mean_block = block_length(settings, _dependence_proxy(score, forward_return))
    indices = _draw_indices(score.size, mean_block, settings)

    # Standardised first: the weighted two-pass sums then stay well-conditioned whatever the units.
    standard_score = (score - score.mean()) / max(score.std(), _ZERO_STD)
    standard_return = (forward_return - forward_return.mean()) / max(forward_return.std(), _ZERO_STD)
    all_once = np.ones((1, score.size))
    pearson_estimate = float(_weighted_correlation(standard_score, standard_return, all_once)[0])
    rank_estimate = float(_weighted_correlation(rankdata(score), rankdata(forward_return), all_once)[0])

    pearson = _over_resamples(indices, lambda counts: _weighted_correlation(standard_score, standard_return, counts))
    rank = _over_resamples(
        indices,
        lambda counts: _weighted_correlation(
            _resampled_ranks(score, counts), _resampled_ranks(forward_return, counts), counts
        ),
    )
    return InformationCoefficients(
        pearson=_percentile_interval(pearson_estimate, pearson, settings.confidence),
        pearson_t=_t_statistic(pearson_estimate, pearson),
        rank=_percentile_interval(rank_estimate, rank, settings.confidence),
        rank_t=_t_statistic(rank_estimate, rank),
        n=int(score.size),
        n_dropped=int((~kept).sum()),
        block_length=mean_block,
    )


# --- words ----------------------------------------------------------------------------------------------------


def interval_words(name: str, interval: Interval, decimals: int = 2) -> str:
    """One sentence for a report, e.g. 'model Sharpe 1.20 (95% CI -0.40 to 2.80): the interval spans zero, ...'."""
    level = f"{interval.level * 100:g}%"  # 0.95 -> "95%", 0.975 -> "97.5%"
    figure = (
        f"{name} {interval.estimate:.{decimals}f} ({level} CI "
        f"{interval.low:.{decimals}f} to {interval.high:.{decimals}f})"
    )
    if interval.spans_zero:
        return f"{figure}: the interval spans zero, so this period cannot tell it from zero"
    side = "above" if interval.low > 0 else "below"
    sign = "positive" if interval.low > 0 else "negative"
    return f"{figure}: the whole interval lies {side} zero, so it is {sign} at the {level} level"
