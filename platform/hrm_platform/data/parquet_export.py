"""`hrm data --to-parquet DIR`: the market a config describes, written as partitioned Parquet (parquet.py).

    hrm data --to-parquet s3://bucket/markets/syn64 data.n_instruments=64 data.n_bars=200000
    hrm data --data prices.csv --to-parquet markets/prices --rows-per-file 50000
    hrm train data.source=file data.path=s3://bucket/markets/syn64 data.loader=ray_data
"""

from __future__ import annotations

import math
import shlex

import pandas as pd

from hrm_platform.config import DataConfig
from hrm_platform.data.dataset import load_bars
from hrm_platform.data.parquet import write_parquet_market


def export_market(config: DataConfig, out: str, rows_per_file: int) -> str:
    """Writes the configured market under `out` (a new or empty folder, or a URI); returns what to print."""
    bars, _ = load_bars(config)
    files = write_parquet_market(bars, out, rows_per_file)
    return _summary(bars, len(files), out, rows_per_file)


def _summary(bars: dict[str, pd.DataFrame], n_files: int, out: str, rows_per_file: int) -> str:
    """Counts, one line per instrument, and the settings that read the market back."""
    n_rows = sum(len(frame) for frame in bars.values())
    head = f"wrote {len(bars)} instruments, {n_files} part files, {n_rows:,} rows to {out}"
    lines = [f"{head} (at most {rows_per_file:,} rows per file)"]
    symbol_width = max(len(symbol) for symbol in bars)
    rows_width = max(len(f"{len(frame):,}") for frame in bars.values())
    for symbol, frame in bars.items():
        parts = math.ceil(len(frame) / rows_per_file)
        lines.append(
            f"  {symbol:<{symbol_width}}  {len(frame):>{rows_width},} rows in {parts} file(s)  "
            f"{frame.index[0]} .. {frame.index[-1]}"
        )
    settings = f"data.source=file data.path={shlex.quote(out)}"
    lines += [
        "read it with:",
        f"  {settings}                      # in memory: every worker loads it all",
        f"  {settings} data.loader=ray_data  # Ray Data: one instrument per task, streamed to the workers",
    ]
    return "\n".join(lines)
