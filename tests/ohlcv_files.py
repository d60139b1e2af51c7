"""OHLCV files on real calendars, written the way users export them (pandas `to_csv` of a DatetimeIndex frame).

    index = daily_equity_index("2015-01-01", "2023-12-31")     # NYSE-like: weekdays minus US federal holidays
    write_ohlcv(tmp_path / "daily.csv", index, seed=0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar
from pandas.tseries.offsets import CustomBusinessDay

HOURS_PER_WEEK_24X5 = 24 * 5
DAYS_PER_YEAR = 365.25


def daily_equity_index(start: str, end: str) -> pd.DatetimeIndex:
    """One bar per trading day: weekdays that are not US federal holidays (~251 a year)."""
    return pd.date_range(start, end, freq=CustomBusinessDay(calendar=USFederalHolidayCalendar()), tz="UTC")


def hourly_24x5_index(start: str, end: str) -> pd.DatetimeIndex:
    """One bar per hour, Monday 00:00 to Friday 23:00 UTC (FX-like): 24 x 5 x 365.25 / 7 ~ 6,261 a year."""
    hours = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    return hours[hours.day_of_week < 5]


def true_bars_per_year(index: pd.DatetimeIndex, bars_per_week: float) -> float:
    return bars_per_week * DAYS_PER_YEAR / 7


def random_walk_bars(index: pd.DatetimeIndex, seed: int, volatility: float = 0.01) -> pd.DataFrame:
    """Valid OHLCV bars (low <= open, close <= high) of a driftless random walk on `index`."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(volatility * rng.standard_normal(len(index))))
    open_ = np.concatenate(([close[0]], close[:-1]))
    high = np.maximum(open_, close) * (1 + 0.3 * volatility * np.abs(rng.standard_normal(len(index))))
    low = np.minimum(open_, close) * (1 - 0.3 * volatility * np.abs(rng.standard_normal(len(index))))
    volume = rng.uniform(1e5, 1e6, len(index))
    return pd.DataFrame({"Open": open_, "High": high, "Low": low, "Close": close, "Volume": volume}, index=index)


def write_ohlcv(path: Path, index: pd.DatetimeIndex, seed: int = 0) -> Path:
    """A pandas `to_csv` file: the unnamed first column is the date."""
    random_walk_bars(index, seed).to_csv(path)
    return path
