"""Lazy windows, labels and chronological splits.

A sample is the window of normalised feature rows ending at bar t of one instrument, labelled from the
realised forward log return over `horizon` bars:

    fwd_t = log(close[t + h] / close[t]),    threshold_t = label_threshold * vol_t * sqrt(h)
    action = buy if fwd_t > threshold_t, sell if fwd_t < -threshold_t, else hold
    quantity = clip((|fwd_t| - threshold_t) / (vol_t * sqrt(h)), 0, 1) for buy/sell, 0 for hold

where vol_t is the causal rolling std of one-bar log returns (features.rolling_volatility). Windows are
sliced on access from one (T, F) array per instrument, which train/val/test share.

Splits are chronological per instrument: train ends, then val ends, then test ends. Between two splits,
`embargo` whole bars separate the last bar a split touches (its last label, t + h) from the first bar the
next split's windows read (t - window + 1), so no window or label horizon crosses a split.

Walk-forward (`data.fold` = k of `data.folds`): the last `oos_fraction` of each instrument's labelled end bars
is cut into `folds` consecutive test periods; fold k tests on period k and trains (and validates) on
everything before it, the same embargo apart (an expanding window). Bars after the fold's test period belong
to no split of that fold.

    bundle = build_datasets(load_config("jobs/configs/smoke.yaml").data)
    window, action, quantity = bundle.train[0]   # (W, F) float32, () int64, () float32
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from hrm_platform.actions import ACTIONS, BUY, HOLD, SELL
from hrm_platform.config import DataConfig
from hrm_platform.data.features import (
    FEATURE_NAMES,
    LOOKBACK,
    FeatureSpec,
    FeatureStats,
    compute_features,
    rolling_volatility,
)
from hrm_platform.data.frequency import BarFrequency, BarSpan, resolve_frequency
from hrm_platform.data.market import REGIME_NAMES, SyntheticMarket, generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS, load_ohlcv

SPLITS = ("train", "val", "test")


class WindowDataset(torch.utils.data.Dataset):
    """Windows (W, F) sliced on demand from per-instrument feature arrays; nothing N x W x F is stored."""

    def __init__(
        self,
        features: list[np.ndarray],
        actions: list[np.ndarray],
        quantities: list[np.ndarray],
        index: np.ndarray,
        window: int,
    ) -> None:
        self.features = features  # per instrument (T_i, F) float32, normalised; shared between splits
        self.actions = actions  # per instrument (T_i,) int64
        self.quantities = quantities  # per instrument (T_i,) float32
        self.index = index  # (N, 2) int64 rows of (instrument, end_t)
        self.window = window
        self.n_features = features[0].shape[1] if features else len(FEATURE_NAMES)

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        instrument, end = (int(v) for v in self.index[position])
        rows = self.features[instrument][end - self.window + 1 : end + 1]  # (W, F) view
        return (
            torch.from_numpy(rows.copy()),
            torch.tensor(self.actions[instrument][end], dtype=torch.int64),
            torch.tensor(self.quantities[instrument][end], dtype=torch.float32),
        )

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather many samples at once: (B, W, F) float32, (B,) int64, (B,) float32 (evaluation, benchmarks)."""
        positions = np.asarray(positions, dtype=np.int64)
        windows = np.empty((positions.shape[0], self.window, self.n_features), dtype=np.float32)
        actions = np.empty(positions.shape[0], dtype=np.int64)
        quantities = np.empty(positions.shape[0], dtype=np.float32)
        offsets = np.arange(-self.window + 1, 1)  # (W,)
        selected = self.index[positions]  # (B, 2)
        for instrument in np.unique(selected[:, 0]):
            mask = selected[:, 0] == instrument
            ends = selected[mask, 1]
            windows[mask] = self.features[instrument][ends[:, None] + offsets]  # (b, W, F)
            actions[mask] = self.actions[instrument][ends]
            quantities[mask] = self.quantities[instrument][ends]
        return torch.from_numpy(windows), torch.from_numpy(actions), torch.from_numpy(quantities)

    def action_counts(self) -> np.ndarray:
        """(3,) int64 number of samples per action class."""
        counts = np.zeros(len(ACTIONS), dtype=np.int64)
        for instrument in np.unique(self.index[:, 0]):
            ends = self.index[self.index[:, 0] == instrument, 1]
            counts += np.bincount(self.actions[instrument][ends], minlength=len(ACTIONS))
        return counts


@dataclass
class DatasetBundle:
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    feature_spec: FeatureSpec
    symbols: list[str]
    bars: dict[str, pd.DataFrame]  # raw bars per symbol
    forward_log_return: dict[str, np.ndarray]  # (T,) realised log(close[t+h] / close[t]); NaN at the end
    market: SyntheticMarket | None  # the oracle, synthetic data only
    config: DataConfig | None = None
    source: str = "synthetic"
    split_ends: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # symbol -> split -> [start, stop)
    frequency: BarFrequency | None = None  # bars per year for annualising, and where that figure came from

    @property
    def bars_per_year(self) -> float:
        if self.frequency is None:
            raise ValueError("this bundle was built without a bar frequency")
        return self.frequency.bars_per_year

    def description(self) -> dict[str, object]:
        """What the data was, for a checkpoint's manifest: source, instruments, spans, splits, frequency."""
        spans = {symbol: BarSpan.of(frame.index) for symbol, frame in self.bars.items()}
        return describe_data(self.source, spans, self.split_ends, self.frequency)

    def split(self, name: str) -> WindowDataset:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def majority_fraction(self, split: str) -> float:
        """Share of the most frequent action in a split (the accuracy of always predicting it)."""
        counts = self.split(split).action_counts()
        return float(counts.max() / counts.sum()) if counts.sum() else float("nan")


def describe_data(
    source: str, spans: dict[str, BarSpan], split_ends: dict[str, dict[str, tuple[int, int]]],
    frequency: BarFrequency | None,
) -> dict[str, object]:
    """A checkpoint manifest's `data` entry, from either loader (`data.loader` memory or ray_data)."""
    return {
        "source": source,
        "symbols": sorted(spans),
        "bars": {symbol: span.count for symbol, span in spans.items()},
        "first_bar": {symbol: str(span.first) for symbol, span in spans.items()},
        "last_bar": {symbol: str(span.last) for symbol, span in spans.items()},
        "split_ends": {symbol: {name: list(bounds) for name, bounds in ranges.items()}
                       for symbol, ranges in split_ends.items()},
        "frequency": None if frequency is None else frequency.to_dict(),
    }


@dataclass
class InstrumentArrays:
    """One instrument's per-bar arrays, as both loaders build them."""

    features: np.ndarray  # (T, F) float32, not yet normalised; NaN rows before LOOKBACK
    actions: np.ndarray  # (T,) int64
    quantities: np.ndarray  # (T,) float32
    forward_log_return: np.ndarray  # (T,) float64, NaN where no label
    ranges: dict[str, tuple[int, int]]  # split -> end-bar range [start, stop)


def instrument_arrays(symbol: str, frame: pd.DataFrame, config: DataConfig) -> InstrumentArrays:
    """Bars of one instrument (BAR_COLUMNS on a sorted DatetimeIndex) -> features, labels and split ranges."""
    values = frame[list(BAR_COLUMNS)].to_numpy(dtype=np.float64)  # (T, 5)
    actions, quantities, forward = label_actions(values[:, 3], config.horizon, config.label_threshold)
    ranges = instrument_ranges(symbol, values.shape[0], config)
    return InstrumentArrays(compute_features(values), actions, quantities, forward, ranges)


def label_actions(close: np.ndarray, horizon: int, label_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T,) close -> actions (T,) int64, quantities (T,) float32, forward log returns (T,) float64.

    Rows without a label (no bar t + h, or no volatility yet) are hold / 0 / NaN and are never indexed.
    """
    log_close = np.log(np.asarray(close, dtype=np.float64))
    forward = np.full_like(log_close, np.nan)
    forward[:-horizon] = log_close[horizon:] - log_close[:-horizon]
    scale = rolling_volatility(close) * np.sqrt(horizon)  # (T,) one-sigma move over the horizon
    threshold = label_threshold * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        actions = np.where(forward > threshold, BUY, np.where(forward < -threshold, SELL, HOLD)).astype(np.int64)
        excess = (np.abs(forward) - threshold) / np.where(scale > 0, scale, np.inf)
    quantities = np.where(actions == HOLD, 0.0, np.clip(np.nan_to_num(excess), 0.0, 1.0)).astype(np.float32)
    return actions, quantities, forward


def split_ranges(
    n_bars: int, window: int, horizon: int, embargo: int, val_fraction: float, test_fraction: float
) -> dict[str, tuple[int, int]]:
    """End-bar ranges [start, stop) per split for one instrument of `n_bars` bars.

    A window ending at t reads feature rows t - window + 1 .. t (each needing LOOKBACK earlier bars) and its
    label reads bar t + horizon. Consecutive splits are `window + horizon + embargo` end bars apart, so the
    later split's first window starts `embargo` bars after the earlier split's last label.
    """
    first_end, last_end = LOOKBACK + window - 1, n_bars - 1 - horizon
    gap = window + horizon + embargo  # end-bar distance between the last end of a split and the next first end
    fractions = {"val": val_fraction, "test": test_fraction}
    n_gaps = sum(1 for value in fractions.values() if value > 0)
    usable = last_end - first_end + 1 - n_gaps * (gap - 1)
    sizes = {name: int(usable * value) for name, value in fractions.items()}
    sizes["train"] = usable - sizes["val"] - sizes["test"]
    if usable <= 0 or sizes["train"] <= 0 or any(sizes[name] <= 0 for name, value in fractions.items() if value > 0):
        raise ValueError(
            f"{n_bars} bars are too few for window {window}, lookback {LOOKBACK}, horizon {horizon}, embargo {embargo} "
            f"and val/test fractions {val_fraction}/{test_fraction}"
        )
    ranges, start = {}, first_end
    for name in SPLITS:
        if sizes[name] > 0 and name != "train":
            start += gap - 1
        ranges[name] = (start, start + sizes[name])
        start += sizes[name]
    return ranges


def fold_ranges(
    n_bars: int, window: int, horizon: int, embargo: int, val_fraction: float, fold: int, folds: int,
    oos_fraction: float,
) -> dict[str, tuple[int, int]]:
    """End-bar ranges [start, stop) of walk-forward fold `fold` of `folds` for one instrument of `n_bars` bars.

    The last `oos_fraction` of the labelled end bars [LOOKBACK + window - 1, n_bars - 1 - horizon] is cut into
    `folds` consecutive test periods. Train and val are `split_ranges` of the bars before the fold's test
    period, ending `window + horizon + embargo` end bars before it, exactly as val ends before test.
    """
    first_end, last_end = LOOKBACK + window - 1, n_bars - 1 - horizon
    n_oos = int((last_end - first_end + 1) * oos_fraction)
    if n_oos < folds:
        raise ValueError(f"{n_bars} bars leave {max(n_oos, 0)} out-of-sample end bars for {folds} folds")
    oos_start = last_end + 1 - n_oos
    test = (oos_start + fold * n_oos // folds, oos_start + (fold + 1) * n_oos // folds)
    gap = window + horizon + embargo
    bars_before = test[0] - gap + 1 + horizon  # a history whose last labelled end bar is test[0] - gap
    try:
        before = split_ranges(bars_before, window, horizon, embargo, val_fraction, 0.0)
    except ValueError:
        raise ValueError(
            f"{n_bars} bars are too few for walk-forward fold {fold} of {folds}: its test period starts at bar "
            f"{test[0]}, which leaves too little before it for window {window}, lookback {LOOKBACK}, horizon "
            f"{horizon}, embargo {embargo} and val fraction {val_fraction} (lower data.oos_fraction)"
        ) from None
    return {"train": before["train"], "val": before["val"], "test": test}


def min_bars(config: DataConfig) -> int:
    """Rows an instrument needs for a single labelled window."""
    return LOOKBACK + config.window + config.horizon


def load_bars(config: DataConfig) -> tuple[dict[str, pd.DataFrame], SyntheticMarket | None]:
    """symbol -> raw bars, and the synthetic market (its oracle) when that is the source; a file's instruments
    are checked to be long enough for one window."""
    if config.source == "synthetic":
        market = generate_market(
            config.n_instruments, config.n_bars, config.seed, config.horizon, signal_strength=config.signal_strength
        )
        return market.bars, market
    return load_ohlcv(config.path, min_rows=min_bars(config)), None


def build_datasets(config: DataConfig, feature_stats: FeatureStats | None = None) -> DatasetBundle:
    """Bars -> features -> labels -> chronological splits; stats are fitted on train rows unless given."""
    bars, market = load_bars(config)
    symbols = sorted(bars)
    arrays = [instrument_arrays(symbol, bars[symbol], config) for symbol in symbols]
    raw_features = [one.features for one in arrays]  # (T_i, F) float32, NaN before LOOKBACK
    actions, quantities = [one.actions for one in arrays], [one.quantities for one in arrays]
    forward = {symbol: one.forward_log_return for symbol, one in zip(symbols, arrays)}
    ranges = {symbol: one.ranges for symbol, one in zip(symbols, arrays)}
    if feature_stats is None:
        feature_stats = FeatureStats.fit(
            [train_feature_rows(one.features, one.ranges["train"], config.window) for one in arrays]
        )
    features = [feature_stats.apply(rows, out=rows) for rows in raw_features]  # normalised in place, (T_i, F)
    splits = {
        name: WindowDataset(
            features, actions, quantities, _split_index([ranges[symbol][name] for symbol in symbols]), config.window
        )
        for name in SPLITS
    }
    spec = FeatureSpec(names=FEATURE_NAMES, lookback=LOOKBACK, window=config.window, stats=feature_stats)
    frequency = resolve_frequency(bars, config.bars_per_year, stated=market.bars_per_year if market else None)
    return DatasetBundle(
        **splits,
        feature_spec=spec,
        symbols=symbols,
        bars=dict(bars),
        forward_log_return=forward,
        market=market,
        config=config,
        source="synthetic" if market is not None else str(config.path),
        split_ends=ranges,
        frequency=frequency,
    )


def instrument_ranges(symbol: str, n_bars: int, config: DataConfig) -> dict[str, tuple[int, int]]:
    try:
        if config.fold is not None:
            return fold_ranges(
                n_bars, config.window, config.horizon, config.embargo_bars, config.val_fraction, config.fold,
                config.folds, config.oos_fraction,
            )
        return split_ranges(
            n_bars, config.window, config.horizon, config.embargo_bars, config.val_fraction, config.test_fraction
        )
    except ValueError as error:
        raise ValueError(f"instrument {symbol}: {error}") from None


def train_feature_rows(features: np.ndarray, train_range: tuple[int, int], window: int) -> np.ndarray:
    """The (rows, F) feature rows of one instrument that its train windows read (what the stats are fitted on)."""
    start, stop = train_range
    return features[start - window + 1 : stop]


def _split_index(ranges: list[tuple[int, int]]) -> np.ndarray:
    """(N, 2) int64 (instrument, end_t) for every end bar of one split, instrument-major."""
    parts = [
        np.stack([np.full(stop - start, instrument), np.arange(start, stop)], axis=1)
        for instrument, (start, stop) in enumerate(ranges)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), dtype=np.int64)


def describe_datasets(bundle: DatasetBundle) -> str:
    """A readable summary for `hrm data`: instruments, bars, split sizes, class balance."""
    spec = bundle.feature_spec
    horizon = bundle.config.horizon if bundle.config else "?"
    embargo = bundle.config.embargo_bars if bundle.config else "?"
    fold = bundle.config.fold if bundle.config else None
    split = "val/test fractions" if fold is None else f"walk-forward fold {fold} of {bundle.config.folds}"
    lines = [
        f"source: {bundle.source}",
        f"bar frequency: {bundle.frequency.describe() if bundle.frequency else 'unknown'}",
        f"window {spec.window} bars, lookback {spec.lookback}, horizon {horizon}, embargo {embargo}; split: {split}; "
        f"{spec.n_features} features: {', '.join(spec.names)}",
        "",
        f"{'instrument':<12}{'bars':>9}  {'first bar (UTC)':<17}  {'last bar (UTC)':<17}",
    ]
    for symbol in bundle.symbols:
        frame = bundle.bars[symbol]
        first, last = (f"{stamp:%Y-%m-%d %H:%M}" for stamp in (frame.index[0], frame.index[-1]))
        lines.append(f"{symbol:<12}{len(frame):>9}  {first:<17}  {last:<17}")
    lines += ["", f"{'split':<8}{'windows':>9}" + "".join(f"{name:>8}" for name in ACTIONS) + f"{'majority':>10}"]
    for name in SPLITS:
        counts = bundle.split(name).action_counts()
        shares = counts / max(counts.sum(), 1)
        lines.append(
            f"{name:<8}{counts.sum():>9}" + "".join(f"{share:>8.1%}" for share in shares) + f"{shares.max():>10.1%}"
        )
    if bundle.market is not None:
        lines.append("")
        lines.append("regime share: " + ", ".join(_regime_shares(bundle.market)))
    return "\n".join(line.rstrip() for line in lines)


def _regime_shares(market: SyntheticMarket) -> list[str]:
    regimes = np.concatenate(list(market.regimes.values()))
    counts = np.bincount(regimes, minlength=len(REGIME_NAMES)) / regimes.shape[0]
    return [f"{name} {share:.1%}" for name, share in zip(REGIME_NAMES, counts)]
