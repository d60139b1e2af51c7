"""Train/serve parity (issue 17, point 4): on the test split, `hrm replay --compare-evaluation CKPT` streams bar by
bar through the live server, and its positions equal `hrm evaluate --checkpoint CKPT`'s backtest positions, on the
synthetic market and on an OHLCV file; the figures of the real `hrm evaluate` run (each instrument's PnL, exposure,
turnover and bar count in metrics.json) come out of the replay's positions again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hrm_platform.serving.replay_parity import POSITION_TOLERANCE, compare_positions
from tests.ohlcv_files import daily_equity_index, random_walk_bars

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_EVALUATION = ["eval.baselines=[]", "eval.act_comparison=false", "eval.bootstrap_resamples=100"]


def hrm(serve_app, *arguments: str) -> subprocess.CompletedProcess:
    """`hrm ARGUMENTS` in a fresh process, with the session app's token in HRM_API_TOKEN."""
    return subprocess.run([sys.executable, "-m", "hrm_platform.cli", *arguments], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env={**os.environ, "HRM_API_TOKEN": serve_app.token})


def evaluate(serve_app, out: Path, *data: str) -> dict:
    """`hrm evaluate --checkpoint <served> [--data FILE]` without the trained baselines (they never change the
    model's positions) -> its metrics.json."""
    done = hrm(serve_app, "evaluate", "--checkpoint", str(serve_app.checkpoint), *data, "--out", str(out),
               *QUICK_EVALUATION)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "metrics.json").read_text())


def replay_and_compare(serve_app, tmp_path: Path, metrics: dict, *data: str) -> pd.DataFrame:
    """`hrm replay --compare-evaluation <served> [--bars FILE]` at evaluate's costs; its table, after checking the
    parity line and that the replay reproduces every instrument's figures in `metrics`."""
    out = tmp_path / "replay.csv"
    done = hrm(serve_app, "replay", "--url", serve_app.url, *data, "--compare-evaluation", str(serve_app.checkpoint),
               "--cost-bps", str(metrics["costs"]["cost_bps"]), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    decisions = metrics["data"]["decisions"]
    assert f"positions equal to `hrm evaluate`'s on all {decisions} test bars" in done.stdout, done.stdout
    table = pd.read_csv(out, parse_dates=["timestamp"])
    test = table[table["evaluation_position"].notna()]
    assert len(test) == decisions and (test["reseeds"] == 0).all()
    np.testing.assert_allclose(test["position"], test["evaluation_position"], rtol=0, atol=POSITION_TOLERANCE)
    assert (test["position"] != 0).mean() > 0.1, "mostly flat positions would make a weak check"
    for symbol, figures in metrics["instruments"].items():
        rows = test[test["symbol"] == symbol]
        model = figures["model"]  # hrm evaluate's own numbers for the model on this instrument
        assert len(rows) == model["n_bars"]
        assert rows["timestamp"].min() == pd.Timestamp(metrics["data"]["test_start"])
        assert rows["net_return"].sum() == pytest.approx(model["pnl"], abs=1e-6)
        assert rows["position"].abs().mean() == pytest.approx(model["exposure"], abs=1e-6)
        assert rows["cost"].sum() / (metrics["costs"]["cost_bps"] / 1e4) / len(rows) == pytest.approx(
            model["turnover"], abs=1e-6)
    return table


def test_replay_positions_equal_hrm_evaluate_on_the_synthetic_test_split(serve_app, tmp_path):
    metrics = evaluate(serve_app, tmp_path / "eval")
    assert metrics["data"]["source"] == "synthetic"
    table = replay_and_compare(serve_app, tmp_path, metrics)
    assert set(table["symbol"]) == set(metrics["data"]["symbols"])


def test_replay_positions_equal_hrm_evaluate_on_an_ohlcv_file(serve_app, tmp_path):
    """A two-symbol daily CSV on a real calendar, as pandas exports it (`Symbol` column, capitalised headers):
    `hrm evaluate --checkpoint CKPT --data FILE` against `hrm replay --bars FILE --compare-evaluation CKPT`."""
    index = daily_equity_index("2015-01-01", "2019-12-31")  # ~1,250 bars a symbol
    csv = tmp_path / "daily.csv"
    frames = [random_walk_bars(index, seed).assign(Symbol=name) for seed, name in enumerate(["AAA", "BBB"])]
    pd.concat(frames).to_csv(csv)
    metrics = evaluate(serve_app, tmp_path / "eval", "--data", str(csv))
    assert metrics["data"]["path"] == str(csv) and metrics["data"]["symbols"] == ["AAA", "BBB"]
    replay_and_compare(serve_app, tmp_path, metrics, "--bars", str(csv))


def test_a_position_that_differs_fails_the_check():
    timestamps = pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC")
    evaluated = pd.DataFrame({"symbol": "AAA", "timestamp": timestamps, "position": [0.0, 0.25, -0.5, 0.0]})
    same = evaluated.assign(position=evaluated["position"] + [0.0, 3e-8, -3e-8, 0.0])  # float32 rounding
    assert compare_positions(same, evaluated).equal
    assert compare_positions(same, evaluated).nonzero == 2
    off = evaluated.assign(position=[0.0, 0.25, -0.49, 0.0])
    parity = compare_positions(off, evaluated)
    assert not parity.equal and parity.mismatches["timestamp"].tolist() == [timestamps[2]]
    assert "DIFFER" in parity.describe("file x.csv", "eager") and "-0.490000" in parity.describe("file x.csv", "eager")
    flipped = evaluated.assign(position=[1e-8, 0.25, -0.5, 0.0])  # hold -> a tiny buy: another action
    assert not compare_positions(flipped, evaluated).equal
    short = compare_positions(same.iloc[:3], evaluated)  # the replay stopped a bar early
    assert short.missing == 1 and not short.equal


def test_a_replay_of_another_model_is_refused(serve_app, client, tmp_path):
    """A server that serves another checkpoint than the one compared with: refused before any bar is sent."""
    from hrm_platform.serving.client import ClientError, get_json
    from hrm_platform.serving.replay_parity import evaluation_positions, replay_evaluation

    evaluation = evaluation_positions(serve_app.checkpoint)
    served = {**get_json(client, "/v1/model"), "model_version": "000000000000"}
    with pytest.raises(ClientError, match="serves model 000000000000"):
        replay_evaluation(client, served, evaluation, cost_bps=1.0)
