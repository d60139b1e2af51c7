"""Partitioned-Parquet markets: a written market reads back bit for bit (read_instrument, load_ohlcv, file://),
every refusal names the part file and the row, and `hrm data --to-parquet DIR` writes the configured market."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hrm_platform.cli import main as hrm_main
from hrm_platform.config import DataConfig
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS, OHLCVError, load_ohlcv
from hrm_platform.data.parquet import list_instrument_files, read_instrument, write_parquet_market

ROWS_PER_FILE = 16  # 50 bars -> parts of 16, 16, 16 and 2 rows


@pytest.fixture(scope="module")
def market() -> dict[str, pd.DataFrame]:
    return generate_market(n_instruments=2, n_bars=50, seed=5, horizon=4).bars


def _hand_made(n: int, start: str) -> pd.DataFrame:
    """n daily bars as load_ohlcv returns them (BAR_COLUMNS float64, UTC index named timestamp)."""
    close = np.linspace(100.0, 120.0, n)
    frame = pd.DataFrame(
        {"open": close - 0.5, "high": close + 1.0, "low": close - 1.0, "close": close, "volume": np.arange(n) * 10.0},
        index=pd.date_range(start, periods=n, freq="D", tz="UTC", name="timestamp"),
    )
    return frame


@pytest.fixture(scope="module")
def two_symbols() -> dict[str, pd.DataFrame]:
    """Symbols a URI must percent-encode ('^'), of different lengths and dates."""
    return {"^GSPC": _hand_made(37, "2020-01-01"), "BRK.B": _hand_made(5, "2021-06-01")}


def _assert_same_bars(loaded: pd.DataFrame, original: pd.DataFrame) -> None:
    """Values and instants exactly equal; the index is the layout's timestamp[ns, UTC] named timestamp."""
    assert list(loaded.columns) == list(BAR_COLUMNS) and loaded.dtypes.eq(np.float64).all()
    np.testing.assert_array_equal(loaded.to_numpy(), original[list(BAR_COLUMNS)].to_numpy())
    assert str(loaded.index.dtype) == "datetime64[ns, UTC]" and loaded.index.name == "timestamp"
    np.testing.assert_array_equal(loaded.index.asi8, original.index.as_unit("ns").asi8)


def _rejection(symbol: str, files: list[str], min_rows: int = 1) -> str:
    with pytest.raises(OHLCVError) as caught:
        read_instrument(symbol, files, min_rows=min_rows)
    return str(caught.value)


def _good_parts(tmp_path: Path, market: dict[str, pd.DataFrame]) -> list[str]:
    """SYN00's four part files of a freshly written market."""
    write_parquet_market(market, str(tmp_path / "m"), ROWS_PER_FILE)
    return list_instrument_files(str(tmp_path / "m"))["SYN00"]


def _rewrite(file: str, change) -> None:
    """Rewrite a part as `change(frame with a timestamp column)` returns it."""
    frame = change(pd.read_parquet(file))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), file)


# --- round trip ------------------------------------------------------------------------------------------


def test_write_gives_the_layout_and_reads_back_exactly(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    out = tmp_path / "m"
    written = write_parquet_market(market, str(out), ROWS_PER_FILE)
    expected = [f"symbol={symbol}/part-{n:05d}.parquet" for symbol in ("SYN00", "SYN01") for n in range(4)]
    assert written == [str(out / name) for name in expected]
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*.parquet")) == expected
    assert [pq.read_metadata(file).num_rows for file in written[:4]] == [16, 16, 16, 2]
    assert pq.read_schema(written[0]).names == ["timestamp", *BAR_COLUMNS]
    assert pq.read_schema(written[0]).field("timestamp").type == pa.timestamp("ns", tz="UTC")
    listed = list_instrument_files(str(out))
    assert listed == {"SYN00": written[:4], "SYN01": written[4:]}
    for symbol, files in listed.items():
        _assert_same_bars(read_instrument(symbol, files), market[symbol])


def test_load_ohlcv_reads_a_market_folder(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    write_parquet_market(market, str(tmp_path / "m"), ROWS_PER_FILE)
    for location in (tmp_path / "m", str(tmp_path / "m")):  # data.path as a Path or a string
        loaded = load_ohlcv(location)
        assert sorted(loaded) == ["SYN00", "SYN01"]
        for symbol, frame in market.items():
            _assert_same_bars(loaded[symbol], frame)


def test_file_uri_with_symbols_to_escape(tmp_path: Path, two_symbols: dict[str, pd.DataFrame]) -> None:
    uri = (tmp_path / "m").as_uri()  # file:///...
    written = write_parquet_market(two_symbols, uri, rows_per_file=10)
    assert (tmp_path / "m" / "symbol=^GSPC" / "part-00003.parquet").is_file()  # 37 rows -> 4 parts
    assert f"{uri}/symbol=%5EGSPC/part-00000.parquet" in written
    listed = list_instrument_files(uri)
    assert list(listed) == ["BRK.B", "^GSPC"] and len(listed["^GSPC"]) == 4
    assert all(file.startswith(f"{uri}/symbol=") for files in listed.values() for file in files)
    for symbol, frame in load_ohlcv(uri).items():
        _assert_same_bars(frame, two_symbols[symbol])
        _assert_same_bars(read_instrument(symbol, listed[symbol]), frame)


def test_timestamps_without_zone_are_utc(tmp_path: Path, two_symbols: dict[str, pd.DataFrame]) -> None:
    (file,) = write_parquet_market({"BRK.B": two_symbols["BRK.B"]}, str(tmp_path / "m"), 10)
    _rewrite(file, lambda frame: frame.assign(timestamp=frame["timestamp"].dt.tz_localize(None)))
    assert pq.read_schema(file).field("timestamp").type.tz is None
    _assert_same_bars(read_instrument("BRK.B", [file]), two_symbols["BRK.B"])


def test_hidden_files_and_other_folders_are_skipped(tmp_path: Path, two_symbols: dict[str, pd.DataFrame]) -> None:
    files = write_parquet_market(two_symbols, str(tmp_path / "m"), 10)
    (tmp_path / "m" / "symbol=BRK.B" / "_SUCCESS").write_text("")
    (tmp_path / "m" / "symbol=BRK.B" / ".part-00009.parquet").write_text("")  # hidden: being written
    (tmp_path / "m" / "notes").mkdir()
    assert list_instrument_files(str(tmp_path / "m"))["BRK.B"] == [file for file in files if "BRK.B" in file]


# --- write refusals --------------------------------------------------------------------------------------


def test_write_refuses_a_non_empty_folder(tmp_path: Path, two_symbols: dict[str, pd.DataFrame]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path / 'm'}: folder is not empty"):
        write_parquet_market(two_symbols, str(tmp_path / "m"), 10)
    assert sorted(path.name for path in (tmp_path / "m").iterdir()) == ["keep.txt"]


def test_write_refuses_a_symbol_that_cannot_name_a_folder(tmp_path: Path, two_symbols: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="symbol 'EUR/USD' cannot name a folder"):
        write_parquet_market({**two_symbols, "EUR/USD": two_symbols["BRK.B"]}, str(tmp_path / "m"), 10)
    assert not (tmp_path / "m").exists()  # checked before the first file is written


# --- read refusals ---------------------------------------------------------------------------------------


def test_missing_columns(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    files = _good_parts(tmp_path, market)
    _rewrite(files[1], lambda frame: frame.drop(columns=["low", "volume"]))
    assert (
        f"{files[1]}: header: missing column(s) low, volume (found: timestamp, open, high, close)"
        in _rejection("SYN00", files)
    )


def test_empty_partition(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    files = _good_parts(tmp_path, market)
    _rewrite(files[2], lambda frame: frame.iloc[:0])
    assert f"{files[2]}: empty partition (0 rows)" in _rejection("SYN00", files)


def test_unsorted_row(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    files = _good_parts(tmp_path, market)
    _rewrite(files[1], lambda frame: frame.iloc[[0, 2, 1, *range(3, 16)]])
    times = market["SYN00"].index
    message = _rejection("SYN00", files)
    assert f"{files[1]}: row 3: unsorted: timestamp {times[17]} is before {times[18]} at row 2" in message


def test_duplicate_row(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    files = _good_parts(tmp_path, market)
    _rewrite(files[0], lambda frame: frame.iloc[[0, 1, 2, 3, 3, *range(5, 16)]])
    assert (
        f"{files[0]}: row 5: duplicate timestamp {market['SYN00'].index[3]} for symbol SYN00 (first at row 4)"
        in _rejection("SYN00", files)
    )


def test_overlapping_parts(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    files = _good_parts(tmp_path, market)
    times = market["SYN00"].index
    message = _rejection("SYN00", [files[0], files[2], files[1]])  # part 2 before part 1: back in time
    assert (
        f"{files[1]}: row 1: timestamp {times[16]} is not after {times[47]}, the last of the previous part {files[2]}"
    ) in message
    _rewrite(files[1], lambda frame: frame.assign(timestamp=frame["timestamp"] - (times[16] - times[15])))
    message = _rejection("SYN00", files)  # part 1 starts on part 0's last bar
    assert (
        f"{files[1]}: row 1: timestamp {times[15]} is not after {times[15]}, the last of the previous part {files[0]}"
    ) in message


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [("volume", -1.0, "negative volume"), ("close", np.nan, "non-finite value in close"), ("low", 1e9, "high < low")],
)
def test_bad_bar_value(
    tmp_path: Path, market: dict[str, pd.DataFrame], column: str, value: float, problem: str
) -> None:
    files = _good_parts(tmp_path, market)

    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[1, column] = value
        return frame

    _rewrite(files[3], spoil)
    assert f"{files[3]}: row 2: {problem}" in _rejection("SYN00", files)


def test_too_few_rows(tmp_path: Path, market: dict[str, pd.DataFrame]) -> None:
    files = _good_parts(tmp_path, market)
    assert len(read_instrument("SYN00", files, min_rows=50)) == 50
    folder = tmp_path / "m" / "symbol=SYN00"
    message = _rejection("SYN00", files, min_rows=51)
    assert f"{folder}: symbol SYN00 has 50 rows in 4 part file(s); at least 51 are needed for one window" in message
    with pytest.raises(OHLCVError, match="symbol SYN00 has 50 rows in 4 part file"):
        load_ohlcv(tmp_path / "m", min_rows=51)  # load_ohlcv passes its min_rows on


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OHLCVError, match=f"{tmp_path / 'absent'}: not found"):
        list_instrument_files(str(tmp_path / "absent"))
    with pytest.raises(OHLCVError, match="absent: not found"):
        load_ohlcv((tmp_path / "absent").as_uri())  # a URI always means a market folder


def test_no_partitions(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bars.parquet").write_text("x")
    with pytest.raises(OHLCVError, match=f"{tmp_path / 'm'}: no symbol=<SYMBOL> partitions"):
        load_ohlcv(tmp_path / "m")  # a folder, not a file: read as a market


def test_partition_without_parquet_files(tmp_path: Path, two_symbols: dict[str, pd.DataFrame]) -> None:
    write_parquet_market(two_symbols, str(tmp_path / "m"), 10)
    (tmp_path / "m" / "symbol=AAPL").mkdir()
    (tmp_path / "m" / "symbol=AAPL" / "notes.txt").write_text("x")
    with pytest.raises(OHLCVError, match=f"{tmp_path / 'm' / 'symbol=AAPL'}: partition with no .parquet files"):
        list_instrument_files(str(tmp_path / "m"))


# --- hrm data --to-parquet -------------------------------------------------------------------------------


def test_cli_writes_the_synthetic_market(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    overrides = ["data.n_instruments=2", "data.n_bars=600"]
    assert hrm_main(["data", "--to-parquet", str(out), "--rows-per-file", "250", *overrides]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 2 instruments, 6 part files, 1,200 rows to {out}" in printed
    assert f"data.source=file data.path={out} data.loader=ray_data" in printed
    listed = list_instrument_files(str(out))
    assert {symbol: [Path(file).name for file in files] for symbol, files in listed.items()} == {
        symbol: ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"] for symbol in ("SYN00", "SYN01")
    }
    config = DataConfig(n_instruments=2, n_bars=600)
    expected = generate_market(config.n_instruments, config.n_bars, config.seed, config.horizon).bars
    for symbol, frame in load_ohlcv(out).items():
        _assert_same_bars(frame, expected[symbol])

    assert hrm_main(["data", "--to-parquet", str(out), *overrides]) == 2  # now non-empty
    assert f"hrm data: {out}: folder is not empty" in capsys.readouterr().err


def test_cli_writes_a_data_file(tmp_path: Path) -> None:
    """The same bars as load_ohlcv reads from the CSV; every instrument must hold one window (lookback 48 + 4 + 2)."""
    market = generate_market(n_instruments=2, n_bars=120, seed=5, horizon=2).bars
    csv = tmp_path / "bars.csv"
    pd.concat([frame.assign(symbol=symbol) for symbol, frame in market.items()]).to_csv(csv)
    out = tmp_path / "m"
    assert hrm_main(["data", "--data", str(csv), "--to-parquet", str(out), "data.window=4", "data.horizon=2"]) == 0
    from_csv, from_parquet = load_ohlcv(csv), load_ohlcv(out)
    assert sorted(from_parquet) == ["SYN00", "SYN01"]
    for symbol in market:
        _assert_same_bars(from_parquet[symbol], from_csv[symbol])


def test_cli_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["data.n_instruments=1", "data.n_bars=200"]
    assert hrm_main(["data", "--to-parquet", str(tmp_path / "m"), "--rows-per-file", "0", *overrides]) == 2
    assert "hrm data: rows per file must be at least 1, got 0" in capsys.readouterr().err
    assert hrm_main(["data", "--rows-per-file", "10", *overrides]) == 2
    assert "--rows-per-file goes with --to-parquet" in capsys.readouterr().err
    assert hrm_main(["data", "--data", str(tmp_path / "absent.csv"), "--to-parquet", str(tmp_path / "m")]) == 2
    assert "absent.csv: file not found" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
