"""`hrm replay`: stream an OHLCV file bar by bar through a running server; write the positions and PnL it got.

    hrm replay --url http://127.0.0.1:8000 --bars bars.csv --out replay.csv [--cost-bps 1.0] [--max-segments 2]

Per symbol: a stream (`replay-<symbol>`) is seeded with the first bars_needed bars (GET /v1/model), then every
later bar is pushed on its own with its timestamp, through `StreamClient` (which re-seeds a lost stream). The
decision at bar t reads the bars up to t only, as in the backtest, and the position it sets (`target_position`)
is held from the close of t to the close of t+1, with the backtest's PnL (evaluation/backtest.py):

    r_t = pos_t * (close[t+1] / close[t] - 1) - cost_bps / 1e4 * |pos_t - pos_{t-1}|      (pos before the first = 0)

The output CSV has one row per decision bar: symbol, timestamp, close, action, confidence, segments, position,
asset_return, cost, net_return and cum_pnl (the last bar, with no next close, has NaN returns).
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
    replay.add_argument("--bars", type=Path, metavar="FILE", required=True, help="OHLCV CSV/Parquet, oldest first")
    replay.add_argument("--out", type=Path, metavar="FILE", default=Path("replay.csv"), help="the CSV written")
    replay.add_argument("--cost-bps", type=float, default=EvalConfig.model_fields["cost_bps"].default,
                        help="cost per unit of position change, basis points (eval.cost_bps's default)")
    replay.add_argument("--max-segments", type=int, default=None, help="ACT segments at most; none: the model's")
    replay.add_argument("--token-env", default=serve["auth_token_env"].default,
                        help="env var holding the bearer token, if the server requires one")
    replay.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    import os

    from hrm_platform.data.ohlcv import OHLCVError
    from hrm_platform.serving.client import ClientError

    token = os.environ.get(args.token_env) or None
    try:
        print(replay_file(args.url, args.bars, args.out, args.cost_bps, args.max_segments, token))
    except OHLCVError as error:
        print(f"hrm replay: {error}", file=sys.stderr)
        return 2
    except ClientError as error:
        print(f"hrm replay: {error}", file=sys.stderr)
        return 1
    return 0


def replay_file(url: str, bars_path: Path, out: Path, cost_bps: float, max_segments: int | None = None,
                token: str | None = None, timeout_s: float = 30.0) -> str:
    """Replay every symbol of the file, write `out`, and return one summary line per symbol."""
    import httpx
    import pandas as pd

    from hrm_platform.data.ohlcv import load_ohlcv
    from hrm_platform.serving.client import get_json

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as http:
        bars_needed = get_json(http, "/v1/model")["bars_needed"]
        instruments = load_ohlcv(Path(bars_path), min_rows=bars_needed)
        tables = [replay_instrument(http, symbol, frame, bars_needed, cost_bps, max_segments)
                  for symbol, frame in instruments.items()]
    table = pd.concat(tables, ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    lines = [_summary(symbol, rows) for symbol, rows in table.groupby("symbol", sort=False)]
    return "\n".join([f"replayed {len(table)} decisions from {bars_path} through {url} -> {out}", *lines])


def replay_instrument(http: Any, symbol: str, frame: Any, bars_needed: int, cost_bps: float,
                      max_segments: int | None = None) -> Any:
    """One symbol's frame (BAR_COLUMNS on a UTC DatetimeIndex) -> a DataFrame of decisions and PnL, a row per bar
    from the bars_needed-th on."""
    import numpy as np
    import pandas as pd

    from hrm_platform.data.ohlcv import BAR_COLUMNS
    from hrm_platform.serving.client import StreamClient

    values = frame[list(BAR_COLUMNS)].to_numpy(dtype=np.float64)  # (N, 5)
    times = [moment.isoformat() for moment in frame.index]
    stream = StreamClient(http, stream_id(symbol), max_segments=max_segments)
    answers = [stream.open(values[:bars_needed], timestamps=times[:bars_needed])]
    for row in range(bars_needed, len(values)):
        # The position held going into this bar: `trade` in the answer is then the order to send.
        answers.append(stream.push(values[row : row + 1], timestamps=times[row : row + 1],
                                   position=answers[-1]["target_position"]))
    stream.close()
    close = values[bars_needed - 1 :, 3]  # (D,): the close of each decision bar
    positions = np.array([answer["target_position"] for answer in answers])  # (D,)
    asset_return = np.append(close[1:] / close[:-1] - 1.0, np.nan)  # close[t] -> close[t+1]; none after the last
    cost = cost_bps / 1e4 * np.abs(np.diff(positions, prepend=0.0))
    net = positions * asset_return - cost
    return pd.DataFrame({
        "symbol": symbol, "timestamp": frame.index[bars_needed - 1 :], "close": close,
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
