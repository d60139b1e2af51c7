"""evaluate_checkpoint end to end on a real (smoke-trained) checkpoint: files, keys, links, parity with training."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from hrm_platform.checkpoint import load_model
from hrm_platform.cli import main as hrm_main
from hrm_platform.data.dataset import build_datasets
from hrm_platform.evaluation import backtest
from hrm_platform.evaluation.split_evaluation import evaluate_checkpoint
from tests.images import assert_sensible_png

STRATEGIES = {"model", "model_1_segment", "model_all_segments", "lightgbm", "mlp", "transformer", "oracle",
              "buy_and_hold", "momentum", "flat"}
TRADING_KEYS = {"total_return", "annualised_return", "sharpe", "sortino", "max_drawdown", "hit_rate", "turnover",
                "exposure", "pnl", "n_bars"}


@pytest.fixture(scope="module")
def evaluation(trained_checkpoint, tmp_path_factory):
    torch.set_num_threads(1)
    return evaluate_checkpoint(trained_checkpoint, tmp_path_factory.mktemp("evaluation"))


def test_metrics_json_has_every_section_with_real_values(evaluation, trained_checkpoint):
    written = json.loads((evaluation.out_dir / "metrics.json").read_text())
    assert written == json.loads(json.dumps(evaluation.metrics))  # what the caller gets is what was written
    assert {"classification", "segments", "portfolio", "instruments", "oracle_pnl_captured", "model_beats",
            "positions", "data", "costs", "plots"} <= written.keys()
    assert set(written["portfolio"]) == STRATEGIES
    for values in written["portfolio"].values():
        assert TRADING_KEYS <= values.keys()
    assert written["portfolio"]["flat"]["pnl"] == 0.0 and written["portfolio"]["flat"]["sharpe"] == 0.0
    assert written["portfolio"]["buy_and_hold"]["exposure"] == 1.0

    _, loaded = load_model(trained_checkpoint)
    bundle = build_datasets(loaded.config.data, feature_stats=loaded.feature_spec.stats)
    n_test = len(bundle.test)
    assert written["data"]["decisions"] == n_test
    assert sum(map(sum, written["classification"]["confusion_matrix"])) == n_test
    assert sum(written["segments"]["counts"].values()) == n_test
    assert set(written["instruments"]) == set(bundle.symbols)
    # The capture ratio is the model's PnL over the oracle's, as the report says.
    portfolio = written["portfolio"]
    assert written["oracle_pnl_captured"] == pytest.approx(portfolio["model"]["pnl"] / portfolio["oracle"]["pnl"])


def test_report_links_existing_sensible_pngs(evaluation):
    report = (evaluation.out_dir / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == 6 and all(not link.startswith("/") for link in links)  # relative links
    for link in links:
        assert_sensible_png(evaluation.out_dir / link)
    assert "Oracle PnL captured" in report and "| **model** |" in report


def test_backtest_windows_are_the_windows_the_model_was_trained_and_tested_on(trained_checkpoint):
    """Parity: windows rebuilt from raw bars with the checkpoint's stats equal the test dataset's windows."""
    _, loaded = load_model(trained_checkpoint)
    bundle = build_datasets(loaded.config.data, feature_stats=loaded.feature_spec.stats)
    positions = np.arange(len(bundle.test))
    expected, _, _ = bundle.test.batch(positions)
    for instrument, end_bars in backtest.decision_bars_by_instrument(bundle.test.index).items():
        frame = bundle.bars[bundle.symbols[instrument]]
        features = backtest.normalised_features(frame[list(frame.columns[:5])].to_numpy(), loaded.feature_spec)
        rebuilt = backtest.windows_ending_at(features, end_bars, loaded.feature_spec.window)
        rows = np.flatnonzero(bundle.test.index[:, 0] == instrument)
        np.testing.assert_array_equal(rebuilt, expected[rows].numpy())


def test_cli_evaluates_an_ohlcv_file_without_an_oracle(trained_checkpoint, evaluation, tmp_path, capsys):
    _, loaded = load_model(trained_checkpoint)
    bundle = build_datasets(loaded.config.data)
    frames = [frame.assign(symbol=symbol) for symbol, frame in bundle.bars.items()]
    csv_path = tmp_path / "bars.csv"
    pd.concat(frames).to_csv(csv_path, index_label="timestamp")

    out_dir = tmp_path / "eval"
    assert hrm_main(["evaluate", "--checkpoint", str(trained_checkpoint), "--data", str(csv_path),
                     "--out", str(out_dir)]) == 0
    assert "buy_and_hold" in capsys.readouterr().out
    written = json.loads((out_dir / "metrics.json").read_text())
    assert "oracle" not in written["portfolio"] and written["oracle_pnl_captured"] is None
    assert written["data"]["source"] == "file"
    # The same bars from a file give the same model decisions as the synthetic source.
    synthetic = evaluation.metrics["portfolio"]
    assert written["portfolio"]["model"]["pnl"] == pytest.approx(synthetic["model"]["pnl"], abs=1e-9)
    assert written["portfolio"]["momentum"]["pnl"] == pytest.approx(synthetic["momentum"]["pnl"], abs=1e-9)
    # The synthetic market states its frequency; the file's is inferred from the same timestamps.
    assert written["data"]["frequency"]["source"] == "inferred"
    assert evaluation.metrics["data"]["frequency"]["source"] == "stated"
    assert written["data"]["bars_per_year"] == pytest.approx(evaluation.metrics["data"]["bars_per_year"], rel=0.02)


def test_cli_evaluate_takes_eval_and_data_overrides(trained_checkpoint, evaluation, tmp_path, capsys):
    out_dir = tmp_path / "costly"
    assert hrm_main(["evaluate", "--checkpoint", str(trained_checkpoint), "--out", str(out_dir),
                     "eval.cost_bps=50"]) == 0
    written = json.loads((out_dir / "metrics.json").read_text())
    assert written["costs"]["cost_bps"] == 50.0
    default_cost = evaluation.metrics["costs"]["cost_bps"]
    assert default_cost < 50.0
    # The same decisions, charged more per unit of turnover: the model's PnL falls by the extra cost.
    model, base = written["portfolio"]["model"], evaluation.metrics["portfolio"]["model"]
    assert model["turnover"] == pytest.approx(base["turnover"])
    assert model["pnl"] < base["pnl"]

    assert hrm_main(["evaluate", "--checkpoint", str(trained_checkpoint), "--out", str(tmp_path / "no"),
                     "model.d_model=64"]) == 2
    assert "change only eval.*, data.*, baselines.*; refused: model.d_model=64" in capsys.readouterr().err


def test_training_curves_show_the_whole_run_not_only_the_evaluated_epoch(tmp_path, capsys):
    """An earlier (best) checkpoint's manifest holds the history up to itself; the plot takes the whole run."""
    from hrm_platform.config import load_config
    from hrm_platform.training.local import train_local

    config = load_config("jobs/configs/smoke.yaml", ["train.epochs=3", "train.max_train_batches=2",
                                                     "train.keep_checkpoints=3"])
    train_local(config, tmp_path / "run")
    first = tmp_path / "run" / "epoch_0001"
    assert len(load_model(first)[1].manifest["metrics"]["history"]) == 1  # what the plot used to draw
    out = tmp_path / "eval"
    assert hrm_main(["evaluate", "--checkpoint", str(first), "--out", str(out), "eval.baselines=[]"]) == 0
    capsys.readouterr()
    written = json.loads((out / "metrics.json").read_text())
    assert written["training"] == {"epochs_in_run": 3, "evaluated_epoch": 1}
    assert_sensible_png(out / "training_curves.png")


def test_act_rows_and_the_per_segment_curve_agree(evaluation):
    """The model stopped after segment 1 and run to all M segments are backtested beside it; their test
    accuracies are the first and last points of the per-segment curve, which the verdict reads."""
    act, accuracy = evaluation.metrics["act"], evaluation.metrics["accuracy_by_model"]
    curve = act["per_segment"]
    assert [point["segment"] for point in curve] == [1, 2, 3]  # the smoke preset's M
    assert accuracy["model_1_segment"] == pytest.approx(curve[0]["accuracy"])
    assert accuracy["model_all_segments"] == pytest.approx(curve[-1]["accuracy"])
    assert accuracy["model"] == pytest.approx(evaluation.metrics["classification"]["accuracy"])
    assert act["mean_segments"] == pytest.approx(evaluation.metrics["segments"]["mean"])
    assert act["verdict"].startswith("Later segments earn")
    assert "| after segment | accuracy | IC |" in (evaluation.out_dir / "report.md").read_text()


def test_act_verdict_says_when_one_segment_is_the_right_answer():
    from hrm_platform.evaluation.summary import act_verdict

    flat = [{"accuracy": 0.40, "ic": 0.02}, {"accuracy": 0.401, "ic": 0.021}]
    assert "halting after one segment is the right answer" in act_verdict(flat, np.ones(10, np.int64))
    rising = [{"accuracy": 0.40, "ic": 0.02}, {"accuracy": 0.45, "ic": 0.08}]
    assert act_verdict(rising, np.full(10, 2)).startswith("Later segments earn +5.0% accuracy and +0.060 IC")
