"""`hrm replay`: stream an OHLCV file bar by bar through a running server; write the positions and PnL it got.

    hrm replay --url http://127.0.0.1:8000 --bars bars.csv --out replay.csv [--cost-bps 1.0] [--max-segments 2]
    hrm replay --url http://127.0.0.1:8000 [--bars bars.csv] --compare-evaluation CKPT   # train/serve parity

Per symbol: a stream (`replay-<symbol>`) is seeded with the first bars_needed bars (GET /v1/model), then every
later bar is pushed on its own with its timestamp, through `StreamClient` (which re-seeds a lost stream). The
decision at bar t reads the bars up to t only, as in the backtest, and the position it sets (`target_position`)
is held from the close of t to the close of t+1, with the backtest's PnL (evaluation/backtest.py):

    r_t = pos_t * (close[t+1] / close[t] - 1) - cost_bps / 1e4 * |pos_t - pos_{t-1}|      (pos before the first = 0)

The output CSV has one row per decision bar: symbol, timestamp, close, action, confidence, segments, position,
asset_return, cost, net_return and cum_pnl (the last bar, with no next close, has NaN returns).

With `--compare-evaluation CKPT` (serving/replay_parity.py) the replay covers the test split of `hrm evaluate
--checkpoint CKPT` (with `--bars FILE`: of `hrm evaluate --checkpoint CKPT --data FILE`), from each instrument's
first test bar, adds the backtest's `evaluation_position` to each row, prints whether every test bar's position
equals the backtest's, and exits 1 when one does not.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from hrm_platform.config import EvalConfig, ServeConfig

STREAM_PREFIX = "replay-"
_NOT_IN_STREAM_IDS = re.compile(r"[^A-Za-z0-9._:-]")  # stream_schemas.STREAM_ID_PATTERN's complement
_SYMBOL_CHARS = 100  # a stream id holds at most 128


def add_replay_command(commands: argparse._SubParsersAction) -> None:
    """Register `hrm replay --url URL --bars FILE --out FILE` on the `hrm` parser's subcommands."""
    serve = ServeConfig.model_fields
    replay = commands.add_parser(
        "replay", help="stream a CSV/Parquet file bar by bar through a running server; write positions and PnL",
        description="Seeds one stream per symbol with its first bars_needed bars, then sends each later bar on its "
        "own (POST /v1/streams/ID/bars) and writes the decision, position and backtest PnL of every bar.",
    )
    replay.add_argument("--url", default=f"http://{serve['host'].default}:{serve['port'].default}",
                        help="base URL of the server")
    replay.add_argument("--bars", type=Path, metavar="FILE", default=None,
                        help="OHLCV CSV/Parquet, oldest first (optional with --compare-evaluation)")
    replay.add_argument("--out", type=Path, metavar="FILE", default=Path("replay.csv"), help="the CSV written")
    replay.add_argument("--cost-bps", type=float, default=EvalConfig.model_fields["cost_bps"].default,
                        help="cost per unit of position change, basis points (eval.cost_bps's default)")
    replay.add_argument("--max-segments", type=int, default=None, help="ACT segments at most; none: the model's")
    replay.add_argument("--token-env", default=serve["auth_token_env"].default,
                        help="env var holding the bearer token, if the server requires one")
    replay.add_argument("--compare-evaluation", metavar="CKPT", default=None,
                        help="replay the test split `hrm evaluate --checkpoint CKPT [--data FILE]` backtests (the "
                        "checkpoint's own data, or --bars FILE) and check that every position equals the backtest's")
    replay.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    import os

    from hrm_platform.serving.client import ClientError

    problem = _flag_problem(args)
    if problem:
        print(f"hrm replay: {problem}", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env) or None
    try:
        if args.compare_evaluation is not None:
            return _compare_with_evaluation(args, token)
        print(replay_file(args.url, args.bars, args.out, args.cost_bps, args.max_segments, token))
        return 0
    except ValueError as error:  # OHLCVError, too few bars for the split, a bad config override
        print(f"hrm replay: {error}", file=sys.stderr)
        return 2
    except ClientError as error:
        print(f"hrm replay: {error}", file=sys.stderr)
        return 1


def _compare_with_evaluation(args: argparse.Namespace, token: str | None) -> int:
    """--compare-evaluation: 0 when every test bar's position equals the backtest's, else 1 (torch is loaded only
    here: the backtest runs the checkpoint's model)."""
    from hrm_platform.serving.replay_parity import replay_against_evaluation
    from hrm_platform.storage import CheckpointError, local_checkpoint

    try:
        checkpoint = local_checkpoint(args.compare_evaluation)  # a URI: its verified copy in the cache
        summary, equal = replay_against_evaluation(args.url, checkpoint, args.bars, args.out, args.cost_bps, token)
    except CheckpointError as error:  # unreadable, or a hash that does not match
        print(f"hrm replay: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0 if equal else 1


def _flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of flags, naming them; None when they go together."""
    if args.bars is None and args.compare_evaluation is None:
        return "give --bars FILE, or --compare-evaluation CKPT (which replays the checkpoint's own test split)"
    if args.compare_evaluation is not None and args.max_segments is not None:
        return ("--max-segments changes the decisions: --compare-evaluation compares with `hrm evaluate`, which runs "
                "the model's own limit (model.max_segments)")
    return None


def open_client(url: str, token: str | None, timeout_s: float) -> Any:
    """An httpx.Client on the server's base URL, with the bearer token when there is one."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)


def replay_file(url: str, bars_path: Path, out: Path, cost_bps: float, max_segments: int | None = None,
                token: str | None = None, timeout_s: float = 30.0) -> str:
    """Replay every symbol of the file, write `out`, and return one summary line per symbol."""
    import pandas as pd

    from hrm_platform.data.ohlcv import load_ohlcv
    from hrm_platform.serving.client import get_json

    with open_client(url, token, timeout_s) as http:
        bars_needed = get_json(http, "/v1/model")["bars_needed"]
        instruments = load_ohlcv(Path(bars_path), min_rows=bars_needed)
        tables = [replay_instrument(http, symbol, frame, bars_needed, cost_bps, max_segments)
                  for symbol, frame in instruments.items()]
    table = pd.concat(tables, ignore_index=True)
    return write_replay(table, out, f"replayed {len(table)} decisions from {bars_path} through {url} -> {out}")


def write_replay(table: Any, out: Path, header: str) -> str:
    """Write the replay table to `out` (CSV); `header` and one summary line per symbol."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    lines = [_summary(symbol, rows) for symbol, rows in table.groupby("symbol", sort=False)]
    return "\n".join([header, *lines])


def replay_instrument(http: Any, symbol: str, frame: Any, bars_needed: int, cost_bps: float,
                      max_segments: int | None = None, first_decision: int | None = None) -> Any:
    """One symbol's frame (BAR_COLUMNS on a UTC DatetimeIndex) -> a DataFrame of decisions and PnL, a row per bar
    from `first_decision` (a row of the frame; default bars_needed - 1, the first with a full window) on.

    The stream is seeded with the bars_needed bars ending at `first_decision`; the position before it is flat."""
    import numpy as np
    import pandas as pd

    from hrm_platform.data.ohlcv import BAR_COLUMNS
    from hrm_platform.serving.client import StreamClient

    first = bars_needed - 1 if first_decision is None else first_decision
    if first < bars_needed - 1 or first >= len(frame):
        raise ValueError(f"{symbol}: the first decision bar must lie in [{bars_needed - 1}, {len(frame) - 1}] (a "
                         f"full window of {bars_needed} bars), got {first}")
    values = frame[list(BAR_COLUMNS)].to_numpy(dtype=np.float64)  # (N, 5)
    times = [moment.isoformat() for moment in frame.index]
    seed = slice(first + 1 - bars_needed, first + 1)
    stream = StreamClient(http, stream_id(symbol), max_segments=max_segments)
    answers = [stream.open(values[seed], timestamps=times[seed])]
    for row in range(first + 1, len(values)):
        # The position held going into this bar: `trade` in the answer is then the order to send.
        answers.append(stream.push(values[row : row + 1], timestamps=times[row : row + 1],
                                   position=answers[-1]["target_position"]))
    stream.close()
    close = values[first:, 3]  # (D,): the close of each decision bar
    positions = np.array([answer["target_position"] for answer in answers])  # (D,)
    asset_return = np.append(close[1:] / close[:-1] - 1.0, np.nan)  # close[t] -> close[t+1]; none after the last
    cost = cost_bps / 1e4 * np.abs(np.diff(positions, prepend=0.0))
    net = positions * asset_return - cost
    return pd.DataFrame({
        "symbol": symbol, "timestamp": frame.index[first:], "close": close,
        "action": [answer["action"] for answer in answers], "confidence": [answer["confidence"] for answer in answers],
        "segments": [answer["segments"] for answer in answers], "position": positions, "asset_return": asset_return,
        "cost": cost, "net_return": net, "cum_pnl": np.nancumsum(net), "latency_ms": [a["latency_ms"] for a in answers],
        "reseeds": stream.reseeds,
    })


def stream_id(symbol: str) -> str:
    """A valid stream id for a symbol: characters outside the id's set become '_'."""
    return STREAM_PREFIX + _NOT_IN_STREAM_IDS.sub("_", str(symbol))[:_SYMBOL_CHARS]


def _summary(symbol: str, rows: Any) -> str:
    return (f"{symbol}: {len(rows)} decisions, PnL {rows['net_return'].sum():+.4f} (costs {rows['cost'].sum():.4f}), "
            f"mean |position| {rows['position'].abs().mean():.3f}, "
            f"p50 server time {rows['latency_ms'].median():.2f} ms, "
            f"{int(rows['reseeds'].iloc[0])} re-seeds")
