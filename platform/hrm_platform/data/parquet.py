"""A market as partitioned Parquet: one hive-style folder per instrument, its bars split over part files.

    DIR/symbol=SYN00/part-00000.parquet     timestamp (timestamp[ns, tz=UTC]), open, high, low, close, volume
    DIR/symbol=SYN00/part-00001.parquet     (float64); rows in time order, each part continuing the previous
    DIR/symbol=SYN01/part-00000.parquet

    files = write_parquet_market(generate_market(4, 6000, 7, 8).bars, "s3://bucket/markets/syn4", 100_000)
    by_symbol = list_instrument_files("s3://bucket/markets/syn4")      # {"SYN00": [".../part-00000.parquet"], ...}
    bars = read_instrument("SYN00", by_symbol["SYN00"], min_rows=200)  # the frame load_ohlcv gives per symbol

DIR is a local path or anything `pyarrow.fs.FileSystem.from_uri` reads (file://, s3://, gs://, ...). Both
loaders read through `read_instrument`: `load_ohlcv(DIR)` for every instrument at once, Ray Data one instrument
per task. A part is refused, never repaired: every rejection is an `OHLCVError` naming the part file and the
row (1-based within that file), as `ohlcv.py` names a CSV's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileInfo, FileSelector, FileSystem, FileType, LocalFileSystem

from hrm_platform.data.ohlcv import BAR_COLUMNS, OHLCVError, column_key, find_bar_problem
from hrm_platform.uri import is_uri

PARTITION_KEY = "symbol"  # DIR/symbol=<SYMBOL>/
TIME_COLUMN = "timestamp"
_SCHEMA = pa.schema([(TIME_COLUMN, pa.timestamp("ns", tz="UTC"))] + [(name, pa.float64()) for name in BAR_COLUMNS])
_UNSAFE_IN_SYMBOL = ("/", "\\", "%")  # a folder separator, or a hive reader's escape


@dataclass(frozen=True)
class _Location:
    """A folder or file both as the caller names it (a local path or a URI) and as pyarrow opens it."""

    name: str  # "/abs/market" or "s3://bucket/market?region=x": what messages and returned lists show
    filesystem: FileSystem
    path: str  # inside `filesystem`: "/abs/runs/market", "bucket/market"

    def child(self, relative: str) -> _Location:
        """`relative` ("symbol=SYN00/part-00000.parquet") below this folder; in a URI it is percent-encoded,
        since from_uri decodes it ("^GSPC" -> "%5EGSPC" -> "^GSPC")."""
        path = f"{self.path.rstrip('/')}/{relative}"
        if not is_uri(self.name):
            return _Location(os.path.join(self.name, relative), self.filesystem, path)
        parts = urlsplit(self.name)
        encoded = f"{parts.path.rstrip('/')}/{quote(relative, safe='/=')}"
        return _Location(urlunsplit(parts._replace(path=encoded)), self.filesystem, path)


# -------------------------------------------------------------------------------------------------- write


def write_parquet_market(bars: Mapping[str, pd.DataFrame], out: str, rows_per_file: int) -> list[str]:
    """symbol -> frame (BAR_COLUMNS on a sorted DatetimeIndex, as load_ohlcv gives) written as the layout above,
    `rows_per_file` rows per part; returns the part files written (absolute paths, or URIs if `out` is one).
    Refuses (ValueError) a non-empty `out`, and checks every frame before it writes the first file."""
    if rows_per_file < 1:
        raise ValueError(f"rows per file must be at least 1, got {rows_per_file}")
    if not bars:
        raise ValueError("no instruments to write")
    for symbol, frame in bars.items():
        _check_writable(symbol, frame)
    root = _locate(out)
    _refuse_non_empty(root)
    written = []
    for symbol, frame in bars.items():
        table = _instrument_table(frame)
        starts = range(0, table.num_rows, rows_per_file)
        digits = max(5, len(str(len(starts) - 1)))  # one width per instrument, so sorting by name is time order
        folder = root.child(f"{PARTITION_KEY}={symbol}")
        folder.filesystem.create_dir(folder.path, recursive=True)  # a no-op on object stores
        for number, start in enumerate(starts):
            part = folder.child(f"part-{number:0{digits}d}.parquet")
            pq.write_table(table.slice(start, rows_per_file), part.path, filesystem=part.filesystem)
            written.append(part.name)
    return written


def _check_writable(symbol: str, frame: pd.DataFrame) -> None:
    """What would make a folder name ambiguous, or a part that read_instrument refuses."""
    if not symbol or symbol in (".", "..") or any(char in symbol for char in _UNSAFE_IN_SYMBOL):
        raise ValueError(f"symbol {symbol!r} cannot name a folder (empty, '.', '..', or contains / \\ or %)")
    missing = [name for name in BAR_COLUMNS if name not in frame.columns]
    if missing or not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError(f"symbol {symbol}: need columns {', '.join(BAR_COLUMNS)} on a DatetimeIndex")
    if frame.empty or not (frame.index.is_monotonic_increasing and frame.index.is_unique):
        raise ValueError(f"symbol {symbol}: bars must be non-empty with strictly increasing timestamps")


def _instrument_table(frame: pd.DataFrame) -> pa.Table:
    """(T, 6) table in _SCHEMA; a naive index is taken as UTC, as load_ohlcv takes it."""
    index = frame.index if frame.index.tz is not None else frame.index.tz_localize("UTC")
    columns = [pa.array(index.tz_convert("UTC").as_unit("ns"))]
    columns += [pa.array(frame[name].to_numpy(dtype=np.float64)) for name in BAR_COLUMNS]
    return pa.Table.from_arrays(columns, schema=_SCHEMA)


def _refuse_non_empty(root: _Location) -> None:
    found = root.filesystem.get_file_info(root.path).type
    if found == FileType.File:
        raise ValueError(f"{root.name}: is a file; give a new or empty folder to write the market into")
    if found == FileType.Directory and root.filesystem.get_file_info(FileSelector(root.path)):
        raise ValueError(f"{root.name}: folder is not empty; give a new or empty folder to write the market into")


# --------------------------------------------------------------------------------------------------- list


def list_instrument_files(uri: str) -> dict[str, list[str]]:
    """symbol -> its part files (*.parquet sorted by name: absolute paths, or URIs if `uri` is one), symbols
    sorted. Names starting with '.' or '_' (_SUCCESS, a part still being written) are skipped, as pyarrow's dataset
    discovery skips them."""
    root = _locate(uri)
    found = _info(root, root.path).type
    if found == FileType.NotFound:
        raise OHLCVError(f"{root.name}: not found")
    if found != FileType.Directory:
        raise OHLCVError(f"{root.name}: is a file, not a folder of {PARTITION_KEY}=<SYMBOL> partitions")
    partitions = sorted(entry.base_name for entry in _info(root, FileSelector(root.path)) if _is_partition(entry))
    if not partitions:
        raise OHLCVError(
            f"{root.name}: no {PARTITION_KEY}=<SYMBOL> partitions (expected folders "
            f"{PARTITION_KEY}=<SYMBOL>/part-00000.parquet, as `hrm data --to-parquet DIR` writes)"
        )
    return {name.partition("=")[2]: _part_files(root.child(name), name) for name in partitions}


def instrument_row_counts(files: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """symbol -> its rows over all its part files, from the Parquet footers only (no data is read): what a
    driver checks splits and folds against before Ray Data tasks read the bars."""
    counts = {}
    for symbol, parts in files.items():
        total = 0
        for part in _locate_parts(parts):
            with part.filesystem.open_input_file(part.path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        counts[symbol] = total
    return counts


def _is_partition(entry: FileInfo) -> bool:
    return entry.type == FileType.Directory and entry.base_name.startswith(f"{PARTITION_KEY}=")


def _part_files(partition: _Location, folder_name: str) -> list[str]:
    if folder_name == f"{PARTITION_KEY}=":
        raise OHLCVError(f"{partition.name}: partition without a symbol")
    names = sorted(
        entry.base_name
        for entry in _info(partition, FileSelector(partition.path))
        if entry.type == FileType.File and entry.base_name.endswith(".parquet") and entry.base_name[0] not in "._"
    )
    if not names:
        raise OHLCVError(f"{partition.name}: partition with no .parquet files")
    return [partition.child(name).name for name in names]


def _info(location: _Location, what: str | FileSelector) -> FileInfo | list[FileInfo]:
    try:
        return location.filesystem.get_file_info(what)
    except (OSError, ValueError) as error:  # no credentials, unreachable bucket; ArrowInvalid is a ValueError
        raise OHLCVError(f"{location.name}: cannot list it: {error}") from None


# --------------------------------------------------------------------------------------------------- read


def read_instrument(symbol: str, files: Sequence[str], min_rows: int = 1) -> pd.DataFrame:
    """One instrument's part files, read in the order given and validated -> BAR_COLUMNS (float64) on a sorted
    UTC DatetimeIndex (ns) named timestamp, the frame load_ohlcv returns per symbol. Each part must continue
    in time after the previous one: overlapping or misordered parts are refused, not sorted."""
    if not files:
        raise OHLCVError(f"symbol {symbol}: no part files to read")
    parts = _locate_parts(files)
    stamps, values = [], []  # per part: (N_i,) int64 ns since the epoch, UTC; (N_i, 5) float64
    for number, part in enumerate(parts):
        part_stamps, part_values = _read_part(part, symbol)
        if number and part_stamps[0] <= stamps[-1][-1]:
            raise OHLCVError(
                f"{part.name}: row 1: timestamp {_stamp(part_stamps[0])} is not after {_stamp(stamps[-1][-1])}, the "
                f"last of the previous part {parts[number - 1].name} (the parts of symbol {symbol} must continue in "
                "time)"
            )
        stamps.append(part_stamps)
        values.append(part_values)
    n_rows = sum(len(part) for part in stamps)
    if n_rows < min_rows:
        raise OHLCVError(
            f"{_folder(parts[0].name)}: symbol {symbol} has {n_rows} rows in {len(files)} part file(s); at least "
            f"{min_rows} are needed for one window (lookback + window + horizon)"
        )
    index = pd.DatetimeIndex(np.concatenate(stamps).view("datetime64[ns]"), name=TIME_COLUMN).tz_localize("UTC")
    return pd.DataFrame(np.concatenate(values), columns=list(BAR_COLUMNS), index=index)


def _read_part(part: _Location, symbol: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 ns UTC timestamps and (N, 5) float64 bars of one part file, checked row by row."""
    table = _read_table(part)
    if table.num_rows == 0:
        raise OHLCVError(f"{part.name}: empty partition (0 rows)")
    stamps = _part_timestamps(table.column(0), part)
    _check_time_order(stamps, part, symbol)
    values = np.column_stack([_part_prices(table.column(name), name, part) for name in BAR_COLUMNS])
    problem = find_bar_problem(values)
    if problem is not None:
        raise OHLCVError(f"{part.name}: row {problem[0] + 1}: {problem[1]}")
    return stamps, values


def _read_table(part: _Location) -> pa.Table:
    """The timestamp and BAR_COLUMNS of a part, in that order; names match as in ohlcv ("Close" is close)."""
    wanted = [TIME_COLUMN, *BAR_COLUMNS]
    try:
        with part.filesystem.open_input_file(part.path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            normalised = {column_key(name): name for name in names}
            missing = [name for name in wanted if name not in normalised]
            if missing:
                found = ", ".join(names)
                raise OHLCVError(f"{part.name}: header: missing column(s) {', '.join(missing)} (found: {found})")
            table = parquet.read(columns=[normalised[name] for name in wanted])
    except (OSError, ValueError) as error:  # absent, not Parquet (ArrowInvalid is a ValueError), unreachable
        if isinstance(error, OHLCVError):
            raise
        raise OHLCVError(f"{part.name}: cannot read the file: {error}") from None
    return table.rename_columns(wanted)


def _part_timestamps(column: pa.ChunkedArray, part: _Location) -> np.ndarray:
    """(N,) int64 ns since the epoch, UTC. A zone-less timestamp is UTC wall time: the same integers."""
    if not pa.types.is_timestamp(column.type):
        raise OHLCVError(f"{part.name}: column {TIME_COLUMN} has type {column.type}, expected a timestamp")
    if column.null_count:
        row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise OHLCVError(f"{part.name}: row {row + 1}: missing timestamp")
    try:
        return column.cast(pa.timestamp("ns", tz=column.type.tz)).cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid as error:  # a timestamp[s] outside 1677..2262
        raise OHLCVError(f"{part.name}: column {TIME_COLUMN}: {error}") from None


def _check_time_order(stamps: np.ndarray, part: _Location, symbol: str) -> None:
    """Strictly increasing within the part; the first row that is not names itself and the row before it."""
    steps = np.diff(stamps)
    if not (steps <= 0).any():
        return
    row = int(np.argmax(steps <= 0)) + 1  # 0-based position of the offending row
    at, before = _stamp(stamps[row]), _stamp(stamps[row - 1])
    if steps[row - 1] == 0:
        raise OHLCVError(
            f"{part.name}: row {row + 1}: duplicate timestamp {at} for symbol {symbol} (first at row {row})"
        )
    raise OHLCVError(
        f"{part.name}: row {row + 1}: unsorted: timestamp {at} is before {before} at row {row} (rows must be in "
        "time order; a part is refused, not sorted)"
    )


def _part_prices(column: pa.ChunkedArray, name: str, part: _Location) -> np.ndarray:
    """(N,) float64; a null becomes NaN, which find_bar_problem reports as non-finite."""
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise OHLCVError(f"{part.name}: column {name} has type {column.type}, expected numbers")
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


# -------------------------------------------------------------------------------------------------- paths


def _locate(location: str) -> _Location:
    """A local path or a URI -> where pyarrow finds it. A local path is made absolute, so that the part files
    listed are the same files in a Ray task whose working directory differs."""
    location = str(location)
    if not is_uri(location):
        absolute = os.path.abspath(location)
        return _Location(absolute, LocalFileSystem(), absolute)
    try:
        filesystem, path = FileSystem.from_uri(location)
    except (OSError, ValueError) as error:  # unknown scheme, bad URI, no credentials, unreachable bucket
        raise OHLCVError(f"{location}: cannot open it: {error}") from None
    return _Location(location, filesystem, path)


def _locate_parts(files: Sequence[str]) -> list[_Location]:
    """`_locate` each file, with one FileSystem per URI authority: from_uri on s3:// asks the bucket's region over
    the network every time. A sibling's path is the first one's prefix ("bucket" for s3, "" for file) + its
    decoded URI path."""
    known: dict[tuple[str, str, str], tuple[FileSystem, str]] = {}  # (scheme, netloc, query) -> (fs, prefix)
    parts = []
    for file in map(str, files):
        split = urlsplit(file)
        key, path = (split.scheme, split.netloc, split.query), unquote(split.path)
        if is_uri(file) and key in known:
            filesystem, prefix = known[key]
            parts.append(_Location(file, filesystem, prefix + path))
            continue
        parts.append(_locate(file))
        if is_uri(file) and parts[-1].path.endswith(path):
            known[key] = (parts[-1].filesystem, parts[-1].path.removesuffix(path))
    return parts


def _stamp(nanoseconds: np.int64) -> pd.Timestamp:
    return pd.Timestamp(int(nanoseconds), unit="ns", tz="UTC")


def _folder(file: str) -> str:
    """The partition folder of a part file, path or URI."""
    return file.rpartition("/")[0] or file
