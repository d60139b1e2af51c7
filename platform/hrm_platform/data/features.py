"""Causal per-bar features, normalisation statistics and the serving-side window builder.

Feature row t depends on bars t - LOOKBACK .. t only, and every rolling statistic is computed from exactly
its own bars (no cumulative sums or running state), so a row comes out the same whether it is computed over
a whole history (training) or over the last `bars_needed` bars of a request (serving).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SHORT, LONG = 8, 48  # bars in the short / long rolling windows
LOOKBACK = LONG  # row t needs bars t - LOOKBACK .. t (ret_48 and 48 one-bar returns)
CHUNK = 1 << 16  # rows per block when computing or normalising long histories
CLIP = 5.0  # normalised features are clipped to [-CLIP, CLIP] standard deviations
_TINY = 1e-12

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",  # log(c_t / c_{t-1})
    "ret_4",
    "ret_16",
    "ret_48",
    "ret_1_z",  # ret_1 / vol_48
    "trend_z",  # ret_16 / (vol_48 * sqrt(16))
    "ma_gap_z",  # (log c_t - mean of log c over 48 bars) / vol_48: distance from the slow average
    "body",  # log(c_t / o_t)
    "range",  # log(h_t / l_t)
    "close_pos",  # (c - l) / (h - l) in [0, 1]; 0.5 for a flat bar
    "log_vol_8",  # log rolling std of one-bar returns over 8 bars
    "vol_ratio",  # log(vol_8 / vol_48)
    "volume_z",  # z-score of log(1 + volume) against its last 48 bars
)


def compute_features(bars: np.ndarray) -> np.ndarray:
    """(T, 5) float64 open/high/low/close/volume -> (T, F) float32; rows t < LOOKBACK are NaN.

    Computed in blocks of CHUNK rows (each with LOOKBACK bars of history in front), which gives the same rows
    as one pass, because a row only sees its own LOOKBACK bars, and keeps float64 temporaries small.
    """
    bars = np.asarray(bars, dtype=np.float64)
    if bars.ndim != 2 or bars.shape[1] != 5:
        raise ValueError(f"bars must have shape (T, 5) in open/high/low/close/volume order, got {bars.shape}")
    features = np.full((bars.shape[0], len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    for start in range(LOOKBACK, bars.shape[0], CHUNK):
        stop = min(start + CHUNK, bars.shape[0])
        block = bars[start - LOOKBACK : stop]  # (LOOKBACK + rows, 5)
        for column, values in enumerate(_feature_columns(block)):
            features[start:stop, column] = values[LOOKBACK:]
    return features


def _feature_columns(bars: np.ndarray) -> list[np.ndarray]:
    """(..., T, 5) bars -> every feature as a (..., T) float64 column in FEATURE_NAMES order (rows < LOOKBACK are not
    meaningful). Every operation runs along the time axis, element by element or window by window, so a leading
    batch axis gives each series exactly the numbers it gets alone."""
    open_, high, low, close, volume = np.moveaxis(bars, -1, 0)
    log_close = np.log(close)
    ret_1 = lagged_difference(log_close, 1)
    vol_long = np.maximum(rolling_std(ret_1, LONG), _TINY)
    vol_short = np.maximum(rolling_std(ret_1, SHORT), _TINY)
    ret_16 = lagged_difference(log_close, 16)
    spread = high - low
    close_position = np.divide(close - low, spread, out=np.full_like(close, 0.5), where=spread > 0)
    log_volume = np.log1p(volume)
    volume_std = np.maximum(rolling_std(log_volume, LONG), 1e-6)
    return [
        ret_1,
        lagged_difference(log_close, 4),
        ret_16,
        lagged_difference(log_close, 48),
        ret_1 / vol_long,
        ret_16 / (vol_long * 4.0),
        (log_close - rolling_mean(log_close, LONG)) / vol_long,
        np.log(close / open_),
        np.log(high / low),
        close_position,
        np.log(vol_short),
        np.log(vol_short / vol_long),
        (log_volume - rolling_mean(log_volume, LONG)) / volume_std,
    ]


def lagged_difference(values: np.ndarray, lag: int) -> np.ndarray:
    """(..., T) values_t - values_{t-lag}; the first `lag` entries are NaN."""
    out = np.full_like(values, np.nan)
    out[..., lag:] = values[..., lag:] - values[..., :-lag]
    return out


def rolling_mean(values: np.ndarray, length: int) -> np.ndarray:
    """(..., T) mean of values[t - length + 1 .. t], each computed from its own window; NaN before that."""
    out = np.full_like(values, np.nan)
    if values.shape[-1] >= length:
        windows = np.lib.stride_tricks.sliding_window_view(values, length, axis=-1)  # (..., T - length + 1, length)
        out[..., length - 1:] = windows.mean(axis=-1)
    return out


def rolling_std(values: np.ndarray, length: int) -> np.ndarray:
    """(..., T) population std over the last `length` values (NaN until a full window of finite values)."""
    mean = rolling_mean(values, length)
    mean_square = rolling_mean(values * values, length)
    return np.sqrt(np.maximum(mean_square - mean * mean, 0.0))


def rolling_volatility(close: np.ndarray, length: int = LONG) -> np.ndarray:
    """(T,) causal std of one-bar log returns over the last `length` bars (the label threshold's scale)."""
    return rolling_std(lagged_difference(np.log(np.asarray(close, dtype=np.float64)), 1), length)


@dataclass
class FeatureStats:
    """Per-feature mean and std fitted on training rows; serving reuses them from the checkpoint."""

    mean: np.ndarray  # (F,) float64
    std: np.ndarray  # (F,) float64, > 0

    @classmethod
    def fit(cls, feature_rows: list[np.ndarray]) -> FeatureStats:
        """Fit on a list of (T_i, F) arrays of finite rows (the train split of each instrument)."""
        count = sum(rows.shape[0] for rows in feature_rows)
        mean = combine_block_sums([block_sums(rows) for rows in feature_rows], count)
        square = combine_block_sums([block_sums(rows, center=mean) for rows in feature_rows], count)
        return cls.from_moments(mean, square)

    @classmethod
    def from_moments(cls, mean: np.ndarray, mean_square_deviation: np.ndarray) -> FeatureStats:
        """(F,) mean and (F,) mean squared deviation -> stats; a constant feature gets std 1."""
        std = np.sqrt(mean_square_deviation)
        return cls(mean=mean, std=np.where(std > _TINY, std, 1.0))

    def apply(self, features: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(..., F) -> (..., F) float32, standardised and clipped to [-CLIP, CLIP]; NaN stays NaN.

        `out` (float32, same shape; may be `features` itself) avoids a second full-size array.
        """
        features = np.asarray(features)
        out = np.empty(features.shape, dtype=np.float32) if out is None else out
        flat_in = features.reshape(-1, features.shape[-1])
        flat_out = out.reshape(-1, features.shape[-1], copy=False)  # a view: writes must land in `out`
        for start in range(0, flat_in.shape[0], CHUNK):
            block = flat_in[start : start + CHUNK].astype(np.float64)  # (rows, F)
            flat_out[start : start + CHUNK] = np.clip((block - self.mean) / self.std, -CLIP, CLIP)
        return out

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureStats:
        mean = np.asarray(payload["mean"], dtype=np.float64)
        std = np.asarray(payload["std"], dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1 or not np.all(std > 0):
            raise ValueError(f"feature stats need equal-length mean and positive std (got {mean.shape}, {std.shape})")
        return cls(mean=mean, std=std)


@dataclass
class FeatureSpec:
    """Everything serving needs to rebuild training's windows from raw bars (stored in manifest.json)."""

    names: tuple[str, ...]
    lookback: int
    window: int
    stats: FeatureStats

    @property
    def bars_needed(self) -> int:
        return self.window + self.lookback

    @property
    def n_features(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "lookback": self.lookback,
            "window": self.window,
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureSpec:
        spec = cls(
            names=tuple(payload["names"]),
            lookback=int(payload["lookback"]),
            window=int(payload["window"]),
            stats=FeatureStats.from_dict(payload["stats"]),
        )
        if spec.names != FEATURE_NAMES or spec.lookback != LOOKBACK:
            raise ValueError(
                f"feature spec (names {list(spec.names)}, lookback {spec.lookback}) does not match this code's "
                f"features (names {list(FEATURE_NAMES)}, lookback {LOOKBACK})"
            )
        if spec.stats.mean.shape[0] != len(spec.names):
            raise ValueError(f"feature stats have {spec.stats.mean.shape[0]} entries for {len(spec.names)} features")
        return spec


def block_sums(rows: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """(T, F) rows -> (ceil(T / CHUNK), F) float64: per block of CHUNK rows, the sum of the rows (or, with
    `center`, of their squared deviations from it).

    The statistics are fitted from these partial sums, added in instrument order by `combine_block_sums`, so
    an in-memory fit and a distributed one (Ray Data, one task per instrument) give the same bits.
    """
    sums = []
    for start in range(0, rows.shape[0], CHUNK):
        block = rows[start : start + CHUNK].astype(np.float64)  # (rows, F)
        sums.append((block if center is None else (block - center) ** 2).sum(axis=0))
    return np.stack(sums) if sums else np.zeros((0, rows.shape[-1]), dtype=np.float64)


def combine_block_sums(per_instrument: list[np.ndarray], count: int) -> np.ndarray:
    """Instrument-ordered (blocks_i, F) partial sums -> (F,) mean over `count` rows, always added in one order."""
    if count == 0:
        raise ValueError("cannot fit feature statistics on zero rows")
    return sum(block for sums in per_instrument for block in sums) / count


def recent_bars(bars: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(N >= bars_needed, 5) raw bars -> the last (bars_needed, 5) as float64: the bars a window depends on."""
    bars = np.asarray(bars, dtype=np.float64)
    if bars.ndim != 2 or bars.shape[1] != 5:
        raise ValueError(f"bars must have shape (N, 5), got {bars.shape}")
    if bars.shape[0] < spec.bars_needed:
        raise ValueError(
            f"need at least {spec.bars_needed} bars (window {spec.window} + lookback {spec.lookback}), "
            f"got {bars.shape[0]}"
        )
    return bars[-spec.bars_needed:]


def window_from_bars(bars: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(N >= bars_needed, 5) raw bars -> (window, F) float32: the window training saw ending at the last bar."""
    features = compute_features(recent_bars(bars, spec))  # (bars_needed, F)
    return spec.stats.apply(features[-spec.window:])  # (window, F)


def windows_from_bars(bars: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(B, bars_needed, 5) raw bars -> (B, window, F) float32: `window_from_bars` for B requests at once, equal to
    it number for number (the columns run along the time axis), with one pass of numpy calls instead of B."""
    bars = np.asarray(bars, dtype=np.float64)
    if bars.ndim != 3 or bars.shape[1:] != (spec.bars_needed, 5):
        raise ValueError(f"bars must have shape (B, {spec.bars_needed}, 5), got {bars.shape}")
    columns = _feature_columns(bars)  # F x (B, bars_needed) float64
    features = np.stack([column[:, -spec.window:] for column in columns], axis=-1).astype(np.float32)
    return spec.stats.apply(features)  # (B, window, F)
