"""Bar frequency read off the timestamps: daily equities, 24x5 hourly bars, the synthetic market, overrides."""

from __future__ import annotations

import pandas as pd
import pytest

from hrm_platform.checkpoint import load_manifest
from hrm_platform.cli import main as hrm_main
from hrm_platform.config import ConfigError, DataConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.data.frequency import infer_bars_per_year, instrument_bars_per_year, resolve_frequency
from hrm_platform.data.market import BARS_PER_YEAR
from tests.ohlcv_files import (
    HOURS_PER_WEEK_24X5,
    daily_equity_index,
    hourly_24x5_index,
    random_walk_bars,
    true_bars_per_year,
    write_ohlcv,
)


@pytest.fixture(scope="module")
def daily_csv(tmp_path_factory) -> object:
    return write_ohlcv(tmp_path_factory.mktemp("daily") / "daily.csv", daily_equity_index("2015-01-01", "2023-06-30"))


def test_daily_equity_bars_give_about_252_a_year() -> None:
    index = daily_equity_index("2015-01-01", "2023-06-30")  # ~2,130 bars
    assert instrument_bars_per_year(index) == pytest.approx(252, rel=0.05)


def test_hourly_24x5_bars_give_their_true_frequency() -> None:
    index = hourly_24x5_index("2024-01-01", "2024-07-01")  # half a year, ~3,100 bars
    assert instrument_bars_per_year(index) == pytest.approx(true_bars_per_year(index, HOURS_PER_WEEK_24X5), rel=0.05)


def test_instruments_combine_by_median_and_one_bar_tells_nothing() -> None:
    daily = random_walk_bars(daily_equity_index("2020-01-01", "2022-12-31"), seed=1)
    hourly = random_walk_bars(hourly_24x5_index("2024-01-01", "2024-03-01"), seed=2)
    assert infer_bars_per_year({"a": daily, "b": daily, "c": hourly}) == pytest.approx(
        instrument_bars_per_year(daily.index)
    )
    assert infer_bars_per_year({"single": daily.iloc[:1]}) is None
    with pytest.raises(ConfigError, match="set data.bars_per_year"):
        resolve_frequency({"single": daily.iloc[:1]}, override=None)


def test_override_within_twofold_is_used_and_threefold_is_refused() -> None:
    bars = {"x": random_walk_bars(daily_equity_index("2018-01-01", "2022-12-31"), seed=3)}
    inferred = infer_bars_per_year(bars)
    used = resolve_frequency(bars, override=260)
    assert (used.bars_per_year, used.source, used.inferred) == (260, "override", inferred)
    with pytest.raises(ConfigError, match=r"data.bars_per_year=756 is 3\.0x the 25\d bars per year inferred"):
        resolve_frequency(bars, override=756)
    with pytest.raises(ConfigError, match=r"1/3\.0 of"):
        resolve_frequency(bars, override=84)


def test_the_synthetic_market_states_its_frequency_and_its_timestamps_agree() -> None:
    bundle = build_datasets(DataConfig(n_instruments=2, n_bars=3000))
    assert (bundle.frequency.source, bundle.bars_per_year) == ("stated", BARS_PER_YEAR)
    assert bundle.frequency.inferred == pytest.approx(BARS_PER_YEAR, rel=0.02)


def test_hrm_data_shows_the_inferred_frequency_of_a_daily_file(daily_csv, capsys) -> None:
    assert hrm_main(["data", "--data", str(daily_csv), "data.window=16"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bar frequency"))
    bars_per_year = float(line.split()[2].replace(",", ""))
    assert bars_per_year == pytest.approx(252, rel=0.05) and "inferred from the timestamps" in line


def test_hrm_data_refuses_an_override_three_times_off(daily_csv, capsys) -> None:
    assert hrm_main(["data", "--data", str(daily_csv), "data.window=16", "data.bars_per_year=756"]) == 2
    error = capsys.readouterr().err
    assert "hrm data: data.bars_per_year=756 is 3.0x the" in error and "inferred from the timestamps" in error


def test_a_checkpoint_stores_the_frequency_it_was_trained_with(trained_checkpoint) -> None:
    data = load_manifest(trained_checkpoint)["data"]
    assert data["frequency"] == {"bars_per_year": BARS_PER_YEAR, "source": "stated",
                                 "inferred": pytest.approx(BARS_PER_YEAR, rel=0.02)}
    assert set(data["split_ends"]) == set(data["symbols"]) and data["source"] == "synthetic"


def test_evaluation_report_uses_the_file_frequency(daily_csv, trained_checkpoint, tmp_path) -> None:
    """A model evaluated on daily bars annualises with ~252, whatever the checkpoint was trained on."""
    import json

    frame = pd.read_csv(daily_csv, index_col=0)
    assert len(frame) > 2000
    out = tmp_path / "eval"
    assert hrm_main(["evaluate", "--checkpoint", str(trained_checkpoint), "--data", str(daily_csv),
                     "--out", str(out), "eval.baselines=[]"]) == 0
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["bars_per_year"] == pytest.approx(252, rel=0.05) and data["frequency"]["source"] == "inferred"
    assert "inferred from the timestamps" in (out / "report.md").read_text()
