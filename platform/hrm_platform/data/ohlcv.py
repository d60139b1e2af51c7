"""OHLCV files as people export them: CSV or Parquet, validated row by row.

Accepted layouts (column names in any case; spaces and dashes count as underscores):
- pandas `to_csv()` of a frame with a DatetimeIndex: the first column is the unnamed date;
- `Date,Open,High,Low,Close,Adj Close,Volume` (extra columns such as adj_close are ignored);
- either of the above plus a `symbol` (or `ticker`) column, for several instruments in one file;
- Parquet with the timestamp as a column or as the frame's DatetimeIndex;
- a partitioned-Parquet market: a folder or URI of `symbol=<SYMBOL>/part-*.parquet` (read by `parquet.py`).

Timestamps without a time zone are taken as UTC. Rows come back sorted by time per symbol. Every rejection
is an `OHLCVError` naming the file, the row (the n-th data row, header not counted; for CSV also the line)
and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

BAR_COLUMNS = ("open", "high", "low", "close", "volume")
TIME_COLUMNS = ("date", "datetime", "timestamp", "time", "unnamed:_0", "")
SYMBOL_COLUMNS = ("symbol", "ticker")
_PRICE_COLUMNS = (0, 1, 2, 3)
# bars_valid's shortcut: prices within max_price_ratio of each other with this much room are within it of the median
# close too, however the float divisions and products of the exact check round (they are ~1e-16 each).
_SAFE_RATIO = 1.0 - 1e-9


class OHLCVError(ValueError):
    """A file that cannot be used as bars; the message names the file, the row and the problem."""


def column_key(name: object) -> str:
    """A column name as it is matched: any case, spaces and dashes as underscores ('Adj Close' -> 'adj_close')."""
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def find_bar_problem(values: np.ndarray, max_price_ratio: float | None = None) -> tuple[int, str] | None:
    """First bad row of (N, 5) float64 bars in BAR_COLUMNS order and what is wrong with it, or None.

    With `max_price_ratio`, a price more than that factor above or below the median close of these bars is an
    implausible jump (a 1e308 close after closes near 100). The HTTP API applies it to a request's bars; the
    file loader does not, since a long history can move that far for real.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(BAR_COLUMNS):
        raise ValueError(f"bars must have shape (N, 5) in {BAR_COLUMNS} order, got {values.shape}")
    with np.errstate(invalid="ignore"):
        checks = _bar_checks(values)
        if max_price_ratio is not None:
            checks += _price_jump_checks(values, max_price_ratio)
    first_bad = [(int(np.argmax(mask)), order) for order, (mask, _) in enumerate(checks) if mask.any()]
    if not first_bad:
        return None
    row, order = min(first_bad)  # earliest row; among its problems, the first check
    return row, checks[order][1]


def bars_valid(values: np.ndarray, max_price_ratio: float | None = None) -> bool:
    """Whether `find_bar_problem(values, max_price_ratio)` finds nothing, for (N, 5) float64 bars: the same rules
    as a few whole-array reductions instead of one mask per rule, so that checking a valid request (the common
    case, on the serving hot path) costs a fraction of finding which rule a bad one breaks."""
    if values.shape[0] == 0:
        return True
    if not np.isfinite(values).all():
        return False
    open_, high, low, close, volume = values.T
    if not ((values[:, :4] > 0).all() and (volume >= 0).all()):
        return False
    if not ((low <= open_) & (open_ <= high) & (low <= close) & (close <= high)).all():  # implies high >= low
        return False
    if max_price_ratio is None:
        return True
    prices = values[:, :4]
    highest, lowest = prices.max(), prices.min()
    if highest <= lowest * max_price_ratio * _SAFE_RATIO:  # the median close lies between: no price strays from it
        return True
    reference = float(np.median(close))  # every close is finite and positive here: _price_jump_checks' `usable`
    return bool(highest <= reference * max_price_ratio and lowest >= reference / max_price_ratio)


def _bar_checks(values: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(mask (N,) bool, message) in the order problems are reported."""
    finite = np.isfinite(values)
    checks = [(~finite[:, column], f"non-finite value in {name}") for column, name in enumerate(BAR_COLUMNS)]
    checks += [(values[:, column] <= 0, f"non-positive price in {BAR_COLUMNS[column]}") for column in _PRICE_COLUMNS]
    open_, high, low, close, volume = values.T
    checks += [
        (volume < 0, "negative volume"),
        (high < low, "high < low"),
        ((open_ < low) | (open_ > high), "open outside [low, high]"),
        ((close < low) | (close > high), "close outside [low, high]"),
    ]
    return checks


def _price_jump_checks(values: np.ndarray, max_ratio: float) -> list[tuple[np.ndarray, str]]:
    """(mask (N,) bool, message) per price column: outside [median close / max_ratio, median close * max_ratio].
    The median barely moves for one wild bar, unlike the mean; it skips non-finite and non-positive closes, which
    their own checks report (a NaN would make every comparison false)."""
    close = values[:, 3]
    usable = close[np.isfinite(close) & (close > 0)]
    if usable.size == 0:
        return []
    reference = float(np.median(usable))
    low_bound, high_bound = reference / max_ratio, reference * max_ratio
    rule = f"is more than {max_ratio:g}x above or below the median close ({reference:.6g}) of the bars"
    return [
        (
            (values[:, column] > high_bound) | (values[:, column] < low_bound),
            f"{BAR_COLUMNS[column]} {rule}: an implausible jump",
        )
        for column in _PRICE_COLUMNS
    ]


def load_ohlcv(path: str | Path, min_rows: int = 1) -> dict[str, pd.DataFrame]:
    """symbol -> frame of BAR_COLUMNS (float64) on a sorted UTC DatetimeIndex; symbol = file stem if no column.
    A folder or a URI string (s3://...) is a partitioned-Parquet market, read part by part as Ray Data reads it."""
    if (isinstance(path, str) and "://" in path) or Path(path).is_dir():
        from hrm_platform.data.parquet import list_instrument_files, read_instrument  # it imports this module

        files = list_instrument_files(str(path))
        return {symbol: read_instrument(symbol, parts, min_rows) for symbol, parts in files.items()}
    path = Path(path)
    table = _read_table(path)
    label = _RowLabel(path)
    columns = _column_map(table, path)
    timestamps = _parse_timestamps(table, columns.get("time"), label)
    values = _parse_values(table, columns, label)  # (N, 5) float64, file order
    problem = find_bar_problem(values)
    if problem is not None:
        raise OHLCVError(f"{label(problem[0])}: {problem[1]}")
    symbols = table[columns["symbol"]].astype(str).to_numpy() if "symbol" in columns else np.full(len(table), path.stem)
    frames = {}
    for symbol in pd.unique(symbols):
        positions = np.flatnonzero(symbols == symbol)  # file rows of this symbol
        frames[str(symbol)] = _instrument_frame(timestamps, values, positions, str(symbol), label, min_rows)
    return frames


class _RowLabel:
    """Formats 'file: row n (line m)' for the i-th data row (0-based position in the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_csv = path.suffix.lower() == ".csv"

    def __call__(self, position: int) -> str:
        line = f" (line {position + 2})" if self.is_csv else ""
        return f"{self.path}: row {position + 1}{line}"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise OHLCVError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise OHLCVError(f"{path}: unsupported file type {suffix!r} (expected .csv or .parquet)")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, ValueError) as error:
        if isinstance(error, OHLCVError):
            raise
        raise OHLCVError(f"{path}: cannot read the file: {error}") from None
    if isinstance(table.index, pd.DatetimeIndex):  # Parquet written from a DatetimeIndex frame
        table = table.reset_index(names="__index_time__")
    if table.empty:
        raise OHLCVError(f"{path}: no data rows")
    return table


def _column_map(table: pd.DataFrame, path: Path) -> dict[str, str]:
    """Logical name (open, ..., volume, time, symbol) -> the file's column name."""
    normalised = {column_key(name): name for name in table.columns}
    columns = {name: normalised[name] for name in BAR_COLUMNS if name in normalised}
    missing = [name for name in BAR_COLUMNS if name not in columns]
    time_names = [name for name in ("__index_time__",) + TIME_COLUMNS if name in normalised]
    if not time_names:
        missing.append("date/timestamp")
    if missing:
        found = ", ".join(map(str, table.columns))
        raise OHLCVError(f"{path}: header: missing column(s) {', '.join(missing)} (found: {found})")
    columns["time"] = normalised[time_names[0]]
    symbol_names = [name for name in SYMBOL_COLUMNS if name in normalised]
    if symbol_names:
        columns["symbol"] = normalised[symbol_names[0]]
    return columns


def _parse_timestamps(table: pd.DataFrame, column: str, label: _RowLabel) -> pd.DatetimeIndex:
    raw = table[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    elif pd.api.types.is_numeric_dtype(raw):  # epoch seconds or milliseconds
        unit = "ms" if np.nanmax(np.abs(raw.to_numpy(dtype=np.float64))) > 1e11 else "s"
        parsed = pd.to_datetime(raw, unit=unit, utc=True, errors="coerce")
    else:
        parsed = _parse_text_timestamps(raw.astype("string"))
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        raise OHLCVError(f"{label(int(bad[0]))}: unparsable timestamp {raw.iloc[bad[0]]!r} in column {column!r}")
    return pd.DatetimeIndex(parsed)


def _parse_text_timestamps(raw: pd.Series) -> pd.Series:
    """One inferred format for the whole column (fast); rows it misses get a per-row parse."""
    with warnings.catch_warnings():  # pandas warns when it falls back to per-row parsing
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(raw, utc=True, errors="coerce")
        missed = parsed.isna() & raw.notna()
        if missed.any():
            parsed[missed] = pd.to_datetime(raw[missed], utc=True, errors="coerce", format="mixed")
    return parsed


def _parse_values(table: pd.DataFrame, columns: dict[str, str], label: _RowLabel) -> np.ndarray:
    """(N, 5) float64 in BAR_COLUMNS order; text that is not a number is rejected by row and column."""
    values = np.empty((len(table), len(BAR_COLUMNS)), dtype=np.float64)
    for position, name in enumerate(BAR_COLUMNS):
        raw = table[columns[name]]
        numeric = pd.to_numeric(raw, errors="coerce")
        not_number = np.flatnonzero((numeric.isna() & raw.notna()).to_numpy())
        if not_number.size:
            raise OHLCVError(f"{label(int(not_number[0]))}: {name} is not a number: {raw.iloc[not_number[0]]!r}")
        values[:, position] = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    return values


def _instrument_frame(
    timestamps: pd.DatetimeIndex,
    values: np.ndarray,
    positions: np.ndarray,
    symbol: str,
    label: _RowLabel,
    min_rows: int,
) -> pd.DataFrame:
    """One symbol's rows (file positions), sorted by time, duplicates and short histories rejected."""
    stamps = timestamps[positions]
    order = np.argsort(stamps.asi8, kind="stable")
    sorted_stamps = stamps[order]
    duplicate = np.flatnonzero(sorted_stamps.asi8[1:] == sorted_stamps.asi8[:-1])
    if duplicate.size:
        first, again = positions[order[duplicate[0]]], positions[order[duplicate[0] + 1]]
        raise OHLCVError(
            f"{label(int(again))}: duplicate timestamp {sorted_stamps[duplicate[0] + 1]} for symbol {symbol} "
            f"(first at row {first + 1})"
        )
    if positions.size < min_rows:
        raise OHLCVError(
            f"{label.path}: symbol {symbol} has {positions.size} rows; at least {min_rows} are needed for one "
            "window (lookback + window + horizon)"
        )
    frame = pd.DataFrame(values[positions[order]], columns=list(BAR_COLUMNS), index=sorted_stamps)
    frame.index.name = "timestamp"
    return frame
