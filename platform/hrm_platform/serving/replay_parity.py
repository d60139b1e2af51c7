"""Train/serve parity: the positions a live server gives on the test split, bar for bar against `hrm evaluate`'s.

    hrm replay --url URL --compare-evaluation CKPT                 # = hrm evaluate --checkpoint CKPT
    hrm replay --url URL --bars FILE --compare-evaluation CKPT     # = hrm evaluate --checkpoint CKPT --data FILE

`evaluation_positions` runs `evaluate_split`, the function `hrm evaluate --checkpoint` runs, on the same data
(the checkpoint's own, or FILE split as its config says), and keeps the model's backtest positions: one per test
decision bar, `direction(argmax) * quantity`, held from the close of t to the close of t+1. `replay_evaluation`
then streams each instrument through the server from its first test bar (the stream is seeded with the
bars_needed bars ending there, as a client that connects at that bar would seed it; a stream holds only
bars_needed bars, so later decisions are those of a stream opened at the file's first bar) with the model's own
segment limit and no deadline, as the backtest runs, and `compare_positions` checks every test bar.

"Equal" is: the same direction (so the same argmax action) and |difference| <= POSITION_TOLERANCE. The
backtest runs windows 512 at a time, the server one (or a dynamic batch) at a time, and float32 matmuls of other
batch sizes round differently: quantities differ by ~1e-7 on some bars (measured on the smoke model: at most
9e-8). Engine variants that compute otherwise (int8, fp16, bf16) are not expected to be equal; the summary
line names the server's variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

POSITION_TOLERANCE = 1e-6  # float32 rounding of batch-1 vs batch-512 inference is ~1e-7 (see the docstring)
SHOWN_MISMATCHES = 5  # bars a failed comparison lists


@dataclass(frozen=True)
class EvaluatedPositions:
    """What `hrm evaluate` backtests for the model on one checkpoint's test split."""

    model_version: str
    max_segments: int  # the limit the backtest's ACT runs to (model.max_segments)
    bars: dict[str, Any]  # symbol -> the bars evaluate read: BAR_COLUMNS on a UTC DatetimeIndex, oldest first
    positions: Any  # DataFrame: symbol, timestamp, position (one row per test decision bar)
    source: str  # "the synthetic market" or the file's path


@dataclass(frozen=True)
class PositionParity:
    """The replay's positions against the backtest's on every test bar."""

    compared: int  # test bars with a replayed position
    missing: int  # test bars the replay has no decision for
    mismatches: Any  # DataFrame: symbol, timestamp, replay, evaluate (rows that differ)
    max_difference: float  # largest |replay - evaluate| over the compared bars
    nonzero: int  # compared bars where the backtest holds a position (a check on all-flat positions is weak)

    @property
    def equal(self) -> bool:
        return self.compared > 0 and self.missing == 0 and len(self.mismatches) == 0

    def describe(self, source: str, variant: str) -> str:
        held = f"{self.nonzero} of them not flat"
        if self.equal:
            return (f"positions equal to `hrm evaluate`'s on all {self.compared} test bars of {source} ({held}; "
                    f"max |difference| {self.max_difference:.1e}, engine {variant})")
        lines = [f"positions DIFFER from `hrm evaluate`'s on {source}: {len(self.mismatches)} of {self.compared} "
                 f"test bars differ (tolerance {POSITION_TOLERANCE:g}), {self.missing} test bars not replayed; "
                 f"engine {variant}" + ("" if variant == "eager" else " (evaluate runs eager fp32)")]
        for row in self.mismatches.head(SHOWN_MISMATCHES).itertuples():
            lines.append(f"  {row.symbol} @ {row.timestamp}: replay {row.replay:+.6f}, evaluate {row.evaluate:+.6f}")
        return "\n".join(lines)


def evaluation_positions(checkpoint: Path, data_path: Path | None = None) -> EvaluatedPositions:
    """The model's backtest positions of `hrm evaluate --checkpoint CHECKPOINT [--data FILE]`.

    The config is built as `evaluate_checkpoint` builds it (the checkpoint's data, or FILE with data.source=file),
    less the trained baselines and the ACT comparison: they are fitted and run beside the model and never change
    its positions (skipping them saves minutes of fitting)."""
    from hrm_platform.checkpoint import load_model
    from hrm_platform.config import with_overrides
    from hrm_platform.data.dataset import load_bars
    from hrm_platform.evaluation.split_evaluation import EVALUATION_OVERRIDE_SECTIONS, evaluate_split

    model, loaded = load_model(checkpoint)
    overrides = [] if data_path is None else ["data.source=file", f"data.path={data_path}"]
    overrides += ["eval.baselines=[]", "eval.act_comparison=false"]
    config = with_overrides(loaded.config, overrides, f"{checkpoint} config for the parity check",
                            EVALUATION_OVERRIDE_SECTIONS, "evaluation")
    result = evaluate_split(model, loaded, config)
    bars, _ = load_bars(config.data)  # what build_datasets read inside evaluate_split
    return EvaluatedPositions(
        model_version=loaded.model_version,
        max_segments=config.model.max_segments,
        bars={item.symbol: bars[item.symbol] for item in result.instruments},
        positions=_positions_table(result),
        source="the synthetic market" if config.data.source == "synthetic" else str(config.data.path),
    )


def _positions_table(result: Any) -> Any:
    """BacktestResult -> DataFrame of the model's position at each test decision bar, per instrument."""
    import pandas as pd

    return pd.concat([
        pd.DataFrame({"symbol": item.symbol, "timestamp": item.timestamps, "position": item.runs["model"].positions})
        for item in result.instruments
    ], ignore_index=True)


def compare_positions(replayed: Any, evaluated: Any) -> PositionParity:
    """Replay rows (symbol, timestamp, position) against the backtest's, on the backtest's bars."""
    import numpy as np

    joined = evaluated.rename(columns={"position": "evaluate"}).merge(
        replayed[["symbol", "timestamp", "position"]].rename(columns={"position": "replay"}),
        on=["symbol", "timestamp"], how="left",
    )
    present = joined[joined["replay"].notna()]
    difference = (present["replay"] - present["evaluate"]).abs()
    differs = (difference > POSITION_TOLERANCE) | (np.sign(present["replay"]) != np.sign(present["evaluate"]))
    return PositionParity(
        compared=len(present),
        missing=int(joined["replay"].isna().sum()),
        mismatches=present[differs].reset_index(drop=True),
        max_difference=float(difference.max()) if len(present) else float("nan"),
        nonzero=int((present["evaluate"] != 0).sum()),
    )


def replay_against_evaluation(url: str, checkpoint: Path, bars_path: Path | None, out: Path, cost_bps: float,
                              token: str | None = None, timeout_s: float = 30.0) -> tuple[str, bool]:
    """Replay the test split of `hrm evaluate --checkpoint CHECKPOINT [--data FILE]` through the server at `url`,
    write `out` (the replay table plus `evaluation_position`), and return (summary, positions equal)."""
    from hrm_platform.serving.client import get_json
    from hrm_platform.serving.replay import open_client, write_replay

    evaluation = evaluation_positions(checkpoint, bars_path)
    with open_client(url, token, timeout_s) as http:
        served = get_json(http, "/v1/model")
        table = replay_evaluation(http, served, evaluation, cost_bps)
    parity = compare_positions(table, evaluation.positions)
    header = (f"replayed the test split of {evaluation.source} ({len(table)} decisions, from each instrument's "
              f"first test bar) through {url} -> {out}")
    return write_replay(table, out, header) + "\n" + parity.describe(evaluation.source, served["variant"]), parity.equal


def replay_evaluation(http: Any, served: dict[str, Any], evaluation: EvaluatedPositions, cost_bps: float) -> Any:
    """Stream each instrument of `evaluation` through the server (`served`: its GET /v1/model) from its first test
    bar; the replay table (`replay.replay_instrument`'s rows) with `evaluation_position` (NaN after the test split).

    The model's own segment limit and no deadline: the backtest runs ACT to model.max_segments with halting."""
    import pandas as pd

    from hrm_platform.serving.client import ClientError
    from hrm_platform.serving.replay import replay_instrument

    if served["model_version"] != evaluation.model_version:
        raise ClientError(f"the server serves model {served['model_version']}, the checkpoint is model "
                          f"{evaluation.model_version}: serve that checkpoint to compare with its evaluation")
    if served["max_segments"] != evaluation.max_segments:
        raise ClientError(f"the server runs at most {served['max_segments']} ACT segments, the backtest "
                          f"model.max_segments={evaluation.max_segments}")
    tables = []
    for symbol, frame in evaluation.bars.items():
        first_test_bar = evaluation.positions.loc[evaluation.positions["symbol"] == symbol, "timestamp"].min()
        tables.append(replay_instrument(http, symbol, frame, served["bars_needed"], cost_bps,
                                        first_decision=frame.index.get_loc(first_test_bar)))
    expected = evaluation.positions.rename(columns={"position": "evaluation_position"})
    return pd.concat(tables, ignore_index=True).merge(expected, on=["symbol", "timestamp"], how="left")
