"""OHLCV loading: the file layouts people export, and one test per rejection asserting file, row and problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS, OHLCVError, find_bar_problem, load_ohlcv


@pytest.fixture(scope="module")
def bars() -> dict[str, pd.DataFrame]:
    return generate_market(n_instruments=2, n_bars=40, seed=3, horizon=4).bars


def _good_rows(n: int = 5) -> pd.DataFrame:
    """A tiny valid CSV frame in the `Date,Open,High,Low,Close,Adj Close,Volume` layout."""
    return pd.DataFrame(
        {
            "Date": pd.date_range("2024-03-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "Open": np.linspace(10, 14, n),
            "High": np.linspace(11, 15, n),
            "Low": np.linspace(9, 13, n),
            "Close": np.linspace(10.5, 14.5, n),
            "Adj Close": np.linspace(10.4, 14.4, n),
            "Volume": np.arange(n) * 100.0,
        }
    )


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _rejection(path: Path, **kwargs) -> str:
    with pytest.raises(OHLCVError) as caught:
        load_ohlcv(path, **kwargs)
    return str(caught.value)


# --- layouts ---------------------------------------------------------------------------------------------


def test_pandas_to_csv_with_unnamed_datetime_index(tmp_path: Path, bars: dict[str, pd.DataFrame]) -> None:
    path = tmp_path / "SYN00.csv"
    bars["SYN00"].rename_axis(None).to_csv(path)  # header starts with an empty column name
    assert path.read_text().startswith(",open,high")
    loaded = load_ohlcv(path)
    assert list(loaded) == ["SYN00"]
    pd.testing.assert_frame_equal(loaded["SYN00"], bars["SYN00"], check_freq=False, check_names=False)
    assert str(loaded["SYN00"].index.tz) == "UTC"


def test_yahoo_layout_any_case_with_adj_close(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.columns = ["DATE", "open", "HiGh", "Low", "CLOSE", "Adj Close", "volume"]
    loaded = load_ohlcv(_write(tmp_path, frame, "AAPL.csv"))
    bars = loaded["AAPL"]
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert bars.dtypes.eq(np.float64).all()
    assert bars.index[0] == pd.Timestamp("2024-03-01", tz="UTC")
    np.testing.assert_allclose(bars["close"], np.linspace(10.5, 14.5, 5))  # Close, not Adj Close


def test_symbol_column_splits_instruments(tmp_path: Path, bars: dict[str, pd.DataFrame]) -> None:
    combined = pd.concat([frame.assign(Symbol=symbol) for symbol, frame in bars.items()]).sort_index(kind="stable")
    path = tmp_path / "many.csv"
    combined.to_csv(path)  # rows of the two symbols interleaved in time, index column named 'timestamp'
    loaded = load_ohlcv(path)
    assert sorted(loaded) == ["SYN00", "SYN01"]
    for symbol, frame in bars.items():
        np.testing.assert_allclose(loaded[symbol].to_numpy(), frame.to_numpy())
        assert loaded[symbol].index.equals(frame.index)


@pytest.mark.parametrize("as_index", [True, False])
def test_parquet_with_index_or_column(tmp_path: Path, bars: dict[str, pd.DataFrame], as_index: bool) -> None:
    path = tmp_path / "SYN01.parquet"
    frame = bars["SYN01"] if as_index else bars["SYN01"].reset_index().rename(columns={"timestamp": "Datetime"})
    frame.to_parquet(path)
    loaded = load_ohlcv(path)["SYN01"]
    np.testing.assert_array_equal(loaded.to_numpy(), bars["SYN01"].to_numpy())
    assert loaded.index.equals(bars["SYN01"].index)


def test_rows_are_sorted_by_time(tmp_path: Path) -> None:
    frame = _good_rows().iloc[[3, 0, 4, 1, 2]]
    loaded = load_ohlcv(_write(tmp_path, frame))["bars"]
    assert loaded.index.is_monotonic_increasing
    np.testing.assert_allclose(loaded["open"], np.linspace(10, 14, 5))


def test_time_zones_become_utc(tmp_path: Path) -> None:
    frame = _good_rows(2)
    frame["Date"] = ["2024-03-01 09:30:00-05:00", "2024-03-01 09:45:00-05:00"]
    loaded = load_ohlcv(_write(tmp_path, frame))["bars"]
    assert loaded.index[0] == pd.Timestamp("2024-03-01 14:30", tz="UTC")


# --- rejections ------------------------------------------------------------------------------------------


def test_missing_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, _good_rows().drop(columns=["Volume", "Low"]))
    message = _rejection(path)
    assert str(path) in message and "header" in message and "missing column(s) low, volume" in message


def test_missing_timestamp_column(tmp_path: Path) -> None:
    path = _write(tmp_path, _good_rows().drop(columns=["Date"]))
    assert "missing column(s) date/timestamp" in _rejection(path)


def test_unparsable_timestamp(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[2, "Date"] = "not a date"
    path = _write(tmp_path, frame)
    assert f"{path}: row 3 (line 4): unparsable timestamp 'not a date'" in _rejection(path)


def test_duplicate_timestamp(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[3, "Date"] = frame.loc[1, "Date"]
    path = _write(tmp_path, frame)
    message = _rejection(path)
    assert f"{path}: row 4 (line 5): duplicate timestamp 2024-03-02 00:00:00+00:00" in message
    assert "(first at row 2)" in message


def test_duplicate_timestamps_are_allowed_across_symbols(tmp_path: Path) -> None:
    frame = pd.concat([_good_rows().assign(Ticker="A"), _good_rows().assign(Ticker="B")])
    loaded = load_ohlcv(_write(tmp_path, frame))
    assert sorted(loaded) == ["A", "B"] and len(loaded["B"]) == 5


def test_nan_value(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[1, "Close"] = np.nan
    path = _write(tmp_path, frame)
    assert f"{path}: row 2 (line 3): non-finite value in close" in _rejection(path)


def test_infinite_value(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[4, "High"] = np.inf
    path = _write(tmp_path, frame)
    assert f"{path}: row 5 (line 6): non-finite value in high" in _rejection(path)


def test_text_that_is_not_a_number(tmp_path: Path) -> None:
    frame = _good_rows().astype({"Open": object})
    frame.loc[0, "Open"] = "ten"
    path = _write(tmp_path, frame)
    assert f"{path}: row 1 (line 2): open is not a number: 'ten'" in _rejection(path)


def test_non_positive_price(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[2, ["Open", "Low"]] = [0.0, 0.0]
    path = _write(tmp_path, frame)
    assert f"{path}: row 3 (line 4): non-positive price in open" in _rejection(path)


def test_high_below_low(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[3, ["High", "Low"]] = [12.0, 13.0]
    path = _write(tmp_path, frame)
    assert f"{path}: row 4 (line 5): high < low" in _rejection(path)


def test_negative_volume(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[1, "Volume"] = -5.0
    path = _write(tmp_path, frame)
    assert f"{path}: row 2 (line 3): negative volume" in _rejection(path)


def test_close_outside_range(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[0, "Close"] = 20.0
    path = _write(tmp_path, frame)
    assert f"{path}: row 1 (line 2): close outside [low, high]" in _rejection(path)


def test_too_few_rows_for_one_window(tmp_path: Path) -> None:
    path = _write(tmp_path, _good_rows(5))
    message = _rejection(path, min_rows=120)
    assert str(path) in message and "symbol bars has 5 rows; at least 120 are needed" in message


def test_parquet_rows_are_numbered_without_lines(tmp_path: Path) -> None:
    frame = _good_rows()
    frame.loc[2, "Volume"] = -1.0
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    assert f"{path}: row 3: negative volume" in _rejection(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "absent.csv: file not found" in _rejection(tmp_path / "absent.csv")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n")
    assert f"{path}: no data rows" in _rejection(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "bars.xlsx"
    path.write_text("x")
    assert "unsupported file type '.xlsx'" in _rejection(path)


# --- find_bar_problem (shared with HTTP validation) ------------------------------------------------------


def test_find_bar_problem_accepts_good_bars(bars: dict[str, pd.DataFrame]) -> None:
    assert find_bar_problem(bars["SYN00"].to_numpy()) is None


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([np.nan, 2.0, 1.0, 1.5, 10.0], "non-finite value in open"),
        ([1.5, 2.0, 1.0, 1.5, np.inf], "non-finite value in volume"),
        ([1.5, 2.0, -1.0, 1.5, 10.0], "non-positive price in low"),
        ([1.5, 2.0, 1.0, 1.5, -1.0], "negative volume"),
        ([1.5, 1.0, 2.0, 1.5, 10.0], "high < low"),
        ([2.5, 2.0, 1.0, 1.5, 10.0], "open outside [low, high]"),
        ([1.5, 2.0, 1.0, 0.5, 10.0], "close outside [low, high]"),
    ],
)
def test_find_bar_problem_names_first_bad_row(row: list[float], expected: str) -> None:
    values = np.tile([1.5, 2.0, 1.0, 1.5, 10.0], (6, 1))
    values[4] = row
    values[5] = [np.nan] * 5  # a later, different problem must not win
    assert find_bar_problem(values) == (4, expected)


def test_find_bar_problem_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        find_bar_problem(np.ones((3, 4)))


def _perturbed_bars(seed: int) -> np.ndarray:
    """Real bars with one or two cells replaced by a value that may break a rule (or may not: an equal high and
    low, a close exactly at the jump bound), so both answers of the check come up often."""
    rng = np.random.default_rng(seed)
    values = generate_market(1, 60, seed=seed % 7, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()[:, :]
    values = values[: rng.integers(1, 60)].copy()
    specials = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308, -0.0]
    for _ in range(rng.integers(0, 3)):
        row, column = rng.integers(0, len(values)), rng.integers(0, 5)
        kind = rng.integers(0, 4)
        if kind == 0:
            values[row, column] = specials[rng.integers(0, len(specials))]
        elif kind == 1:  # another cell of the same bar: high = low, open = high, ...
            values[row, column] = values[row, rng.integers(0, 5)]
        elif kind == 2:  # a price far from the rest: beyond the jump bound or just inside it
            values[row, column] = np.median(values[:, 3]) * rng.choice([0.099, 0.1, 9.99, 10.0, 10.01, 50.0])
        else:
            values[row, column] *= rng.uniform(0.9, 1.1)
    return values


@pytest.mark.parametrize("max_price_ratio", [None, 10.0, 1.05])
def test_bars_valid_agrees_with_find_bar_problem(max_price_ratio: float | None) -> None:
    """The hot path's whole-array check says valid exactly when the rule-by-rule check finds no problem."""
    from hrm_platform.data.ohlcv import bars_valid

    answers = []
    for seed in range(600):
        values = _perturbed_bars(seed)
        valid = bars_valid(values, max_price_ratio)
        assert valid == (find_bar_problem(values, max_price_ratio) is None), (seed, values)
        answers.append(valid)
    assert 0.2 < np.mean(answers) < 0.9  # both outcomes were exercised
    assert bars_valid(np.empty((0, 5)), max_price_ratio)
