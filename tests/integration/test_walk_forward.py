"""Walk-forward evaluation on a local Ray cluster: concurrent folds, no look-ahead, every figure per fold and
pooled for the model and every baseline; and `hrm evaluate --walk-forward` on an OHLCV file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import load_config
from hrm_platform.evaluation.walk_forward import run_walk_forward
from hrm_platform.evaluation.walk_forward_report import write_walk_forward_report
from tests.images import assert_sensible_png
from tests.ohlcv_files import daily_equity_index, random_walk_bars

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "jobs/configs/smoke.yaml"
FOLDS = 4
FAST = ["train.num_workers=1", "train.epochs=1", "baselines.epochs=2", "eval.bootstrap_resamples=300"]
STRATEGIES = {"model", "model_1_segment", "model_all_segments", "lightgbm", "mlp", "transformer", "oracle",
              "buy_and_hold", "momentum", "flat"}
TRAINED = {"model", "model_1_segment", "model_all_segments", "lightgbm", "mlp", "transformer"}
FIGURES = {"sharpe", "sharpe_ci", "max_drawdown", "turnover", "total_return"}


@pytest.fixture(scope="module")
def walk_forward(ray_cluster, tmp_path_factory):
    """Four folds of the smoke market (its strength-20 signal is a planted one) on the 4-CPU session cluster."""
    config = load_config(SMOKE, FAST)
    out = tmp_path_factory.mktemp("walk_forward")
    runs = run_walk_forward(config, FOLDS, out)
    return config, runs, write_walk_forward_report(runs, config, out)


def test_folds_train_concurrently_when_the_cluster_has_room(walk_forward) -> None:
    _, runs, _ = walk_forward
    assert [run.fold for run in runs] == list(range(FOLDS)) and all(run.trained for run in runs)
    spans = sorted((run.train_started, run.train_finished) for run in runs)
    overlapping = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    assert overlapping, f"no two folds trained at the same time: {spans}"


def test_no_fold_trains_on_bars_at_or_after_its_test_start_minus_the_embargo(walk_forward) -> None:
    config, runs, _ = walk_forward
    embargo, window, horizon = config.data.embargo_bars, config.data.window, config.data.horizon
    for run in runs:
        manifest = load_manifest(run.checkpoint)  # what the fold's run recorded about its own data
        assert manifest["config"]["data"]["fold"] == run.fold
        for symbol, ranges in manifest["data"]["split_ends"].items():
            last_label_bar = max(ranges["train"][1], ranges["val"][1]) - 1 + horizon
            first_test_bar = ranges["test"][0] - window + 1
            assert last_label_bar < first_test_bar - embargo
            assert run.result.test_first_bar[symbol] == first_test_bar  # and these are the bars backtested
    starts = [run.result.portfolio.timestamps[0] for run in runs]
    ends = [run.result.portfolio.timestamps[-1] for run in runs]
    assert all(end < start for end, start in zip(ends, starts[1:]))  # consecutive, disjoint test periods


def test_every_figure_per_fold_and_pooled_for_the_model_and_every_baseline(walk_forward) -> None:
    _, _, report = walk_forward
    written = json.loads(report.metrics_path.read_text())
    for record in [written["pooled"], *written["folds"]]:
        assert set(record["portfolio"]) == STRATEGIES
        for name, row in record["portfolio"].items():
            assert FIGURES <= row.keys()
            low, high = row["sharpe_ci"]
            assert low <= row["sharpe"] <= high or name == "flat"
            if name != "model":
                assert {"estimate", "low", "high", "spans_zero"} <= row["sharpe_lead_of_model"].keys()
        assert set(record["information_coefficient"]) == TRAINED | {"oracle"}
        for ic in record["information_coefficient"].values():
            assert -1 <= ic["pearson"]["estimate"] <= 1 and -1 <= ic["rank"]["estimate"] <= 1
            assert ic["pearson"]["t_stat"] is not None and ic["n"] > 0
    assert written["pooled"]["bars"] == sum(fold["bars"] for fold in written["folds"])
    assert len(written["pooled"]["act"]["per_segment"]) == 3 and written["pooled"]["act"]["verdict"]
    assert written["data"]["frequency"]["source"] == "stated"


def test_the_planted_signal_is_detected_in_the_pooled_record(walk_forward) -> None:
    """The smoke market's oracle knows the planted signal: its pooled IC interval lies above zero."""
    _, _, report = walk_forward
    oracle = report.metrics["pooled"]["information_coefficient"]["oracle"]["pearson"]
    assert oracle["low"] > 0 and not oracle["spans_zero"]
    assert "the whole interval lies above zero" in report.report_path.read_text() or oracle["estimate"] > 0


def test_report_and_plots(walk_forward) -> None:
    _, _, report = walk_forward
    text = report.report_path.read_text()
    assert "## Pooled out-of-sample" in text and text.count("### Fold ") == FOLDS
    assert "spans zero" in text or "lies above zero" in text or "lies below zero" in text
    for path in report.plot_paths.values():
        assert_sensible_png(path)
    assert f"walk-forward: {FOLDS} folds" in report.summary()


def test_hrm_evaluate_walks_forward_over_an_ohlcv_file(tmp_path: Path) -> None:
    """Through the real entry point: four folds of two daily random walks, annualised at ~252 bars a year."""
    index = daily_equity_index("2017-01-01", "2022-12-31")
    frames = [random_walk_bars(index, seed).assign(Symbol=symbol) for seed, symbol in enumerate(["AAA", "BBB"])]
    csv_path = tmp_path / "daily.csv"
    pd.concat(frames).to_csv(csv_path, index_label="Date")
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "wf"
    command = [sys.executable, "-m", "hrm_platform.cli", "evaluate", "--walk-forward", "4", "--config", str(SMOKE),
               "--data", str(csv_path), "--out", str(out), *FAST]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "walk-forward: 4 folds, pooled out-of-sample" in completed.stdout
    written = json.loads((out / "metrics.json").read_text())
    assert len(written["folds"]) == 4 and "oracle" not in written["pooled"]["portfolio"]
    assert set(written["pooled"]["portfolio"]) == STRATEGIES - {"oracle"}
    assert written["data"]["frequency"]["source"] == "inferred"
    assert written["data"]["bars_per_year"] == pytest.approx(252, rel=0.05)
    stated = re.search(r"([\d,]+) bars per year \(inferred from the timestamps\)", (out / "report.md").read_text())
    assert stated and float(stated.group(1).replace(",", "")) == pytest.approx(252, rel=0.05)
