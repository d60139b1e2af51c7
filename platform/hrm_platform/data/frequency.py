"""The bar frequency (bars per year) that every annualised figure uses, read off the data's own timestamps.

Bars per year is what a calendar year of this data actually holds: per instrument,

    bars_per_year = (T - 1) / (span in days / 365.25),    span = last timestamp - first timestamp

so weekends, holidays, session hours and gaps count as they occur. Daily equities give ~252, 24x5 FX hourly
bars ~6,260, crypto 24x7 hourly ~8,766, a 6.5-hour session of 15-minute bars ~6,550 (26 x ~252). Instruments
are combined by their median. `data.bars_per_year` overrides the inferred value, but an override more than
MAX_OVERRIDE_RATIO off is refused: it would scale every Sharpe ratio by its square root, silently.

    frequency = resolve_frequency(bundle.bars, override=None)     # BarFrequency(6552.1, "inferred", 6552.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from hrm_platform.config import ConfigError

DAYS_PER_YEAR = 365.25
MAX_OVERRIDE_RATIO = 2.0  # an override this many times above or below the inferred frequency is refused
_SOURCE_WORDS = {"inferred": "inferred from the timestamps", "stated": "stated by the synthetic market"}


@dataclass(frozen=True)
class BarFrequency:
    """The frequency used (`bars_per_year`), where it came from, and what the timestamps say."""

    bars_per_year: float
    source: str  # "inferred" (from timestamps), "stated" (the synthetic market's own) or "override"
    inferred: float | None  # from the timestamps; None when they cannot tell (one bar, one timestamp)

    def to_dict(self) -> dict[str, float | str | None]:
        return asdict(self)

    def describe(self) -> str:
        """'6552 bars per year (inferred from the timestamps)' and the like, for reports and `hrm data`."""
        how = _SOURCE_WORDS.get(self.source, f"data.bars_per_year override; the timestamps say {_round(self.inferred)}")
        return f"{_round(self.bars_per_year)} bars per year ({how})"


@dataclass(frozen=True)
class BarSpan:
    """An instrument's bar count and first and last timestamps: all the frequency needs (what a Ray Data task
    sends back instead of the bars)."""

    count: int
    first: pd.Timestamp
    last: pd.Timestamp

    @classmethod
    def of(cls, index: pd.DatetimeIndex) -> BarSpan:
        return cls(len(index), index[0], index[-1])

    def bars_per_year(self) -> float | None:
        """(T - 1) bar intervals per 365.25 days; None for fewer than 2 distinct times."""
        span_days = (self.last - self.first).total_seconds() / 86400.0
        if self.count < 2 or span_days <= 0:
            return None
        return (self.count - 1) / (span_days / DAYS_PER_YEAR)


def instrument_bars_per_year(index: pd.DatetimeIndex) -> float | None:
    """(T - 1) bar intervals per 365.25 days of this instrument's span; None for fewer than 2 distinct times."""
    return BarSpan.of(index).bars_per_year() if len(index) else None


def infer_bars_per_year(bars: Mapping[str, pd.DataFrame | BarSpan]) -> float | None:
    """The median over instruments of their bars per year; None when no instrument can tell."""
    spans = [value if isinstance(value, BarSpan) else BarSpan.of(value.index) for value in bars.values()
             if isinstance(value, BarSpan) or len(value.index)]
    values = [value for span in spans if (value := span.bars_per_year()) is not None]
    return float(np.median(values)) if values else None


def resolve_frequency(
    bars: Mapping[str, pd.DataFrame | BarSpan], override: float | None, stated: float | None = None
) -> BarFrequency:
    """The frequency to annualise with: the override if given and plausible, else the stated or inferred one.

    `stated`: what a source declares about itself (the synthetic market); it wins over the inference, and an
    override is checked against it the same way. Raises ConfigError when an override is more than
    MAX_OVERRIDE_RATIO off, or when there is neither an override nor timestamps to infer from.
    """
    inferred = infer_bars_per_year(bars)
    reference, source = (stated, "stated") if stated is not None else (inferred, "inferred")
    if override is None:
        if reference is None:
            raise ConfigError(
                "cannot infer the bar frequency: every instrument has fewer than two distinct timestamps; "
                "set data.bars_per_year"
            )
        return BarFrequency(float(reference), source, inferred)
    if reference is not None and not 1 / MAX_OVERRIDE_RATIO <= override / reference <= MAX_OVERRIDE_RATIO:
        raise ConfigError(
            f"data.bars_per_year={_round(override)} is {_ratio_words(override, reference)} the {_round(reference)} "
            f"bars per year {_SOURCE_WORDS[source]}; annualising with it would scale every Sharpe ratio by "
            f"{np.sqrt(override / reference):.2f}. Remove the override, or fix the timestamps"
        )
    return BarFrequency(float(override), "override", inferred)


def _ratio_words(value: float, reference: float) -> str:
    ratio = value / reference
    return f"{ratio:.1f}x" if ratio > 1 else f"1/{1 / ratio:.1f} of"


def _round(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f}"
