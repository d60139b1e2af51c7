r"""Backtest a checkpoint on the test split as a Ray job (or plainly with `python -m jobs.evaluate`).

    ray job submit --working-dir . -- python -m jobs.evaluate --checkpoint runs/demo/epoch_0002 --out artifacts/eval
    ray job submit --working-dir . -- python -m jobs.evaluate --checkpoint runs/demo/epoch_0002 --data bars.csv \
        --out artifacts/eval

--checkpoint is the best checkpoint that `hrm train` printed; its path must be readable from the node that
runs the job (a shared path, or one inside the working dir). Writes OUT/metrics.json, OUT/*.png and OUT/report.md; prints the summary table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hrm_platform.evaluation.backtest import evaluate_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="OHLCV CSV/Parquet instead of the synthetic market")
    parser.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    args = parser.parse_args(argv)
    report = evaluate_checkpoint(args.checkpoint, args.out, data_path=args.data)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
