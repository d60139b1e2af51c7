r"""Backtest a checkpoint, or walk forward over K folds, as a Ray job (or plainly with `python -m jobs.evaluate`).

    ray job submit --working-dir . -- python -m jobs.evaluate --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --out artifacts/eval
    ray job submit --working-dir . -- python -m jobs.evaluate --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --data bars.csv \
        --out artifacts/eval
    ray job submit --working-dir . -- python -m jobs.evaluate --walk-forward 4 --config jobs/configs/demo.yaml \
        --out /shared/walk_forward [key=value ...]

--checkpoint is the best checkpoint that `hrm train` printed; its path must be readable from the node that
runs the job (a shared path, or one inside the working dir). --walk-forward trains one model per fold on the
job's cluster (folds run concurrently as it has room; their runs go under OUT/runs, so give OUT as an
absolute shared path or a relative one, which is taken under ~/ray_results as for jobs.train). Writes
OUT/metrics.json, OUT/*.png and OUT/report.md; prints the summary table. The package is imported from this
checkout's `platform/` and shipped to the cluster's workers, as jobs.train does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "platform"  # a source root, not a package


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(SOURCE_ROOT))  # this copy of hrm_platform, installed or not
    import ray

    if "RAY_ADDRESS" in os.environ:  # inside `ray job submit`: the job's cluster, this copy of the package
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"py_modules": [str(SOURCE_ROOT / "hrm_platform")]},
                 log_to_driver=False)
    if args.walk_forward is not None:
        return _walk_forward(args)
    from hrm_platform.evaluation.split_evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.out, data_path=args.data, overrides=args.overrides)
    print(report.summary())
    return 0


def _walk_forward(args: argparse.Namespace) -> int:
    from hrm_platform.config import ConfigError, load_config
    from hrm_platform.evaluation.walk_forward import run_walk_forward
    from hrm_platform.evaluation.walk_forward_report import write_walk_forward_report
    from jobs.train import job_storage_path

    overrides = list(args.overrides)
    if args.data is not None:
        overrides += ["data.source=file", f"data.path={args.data}"]
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"jobs.evaluate: {error}", file=sys.stderr)
        return 2
    out = Path(job_storage_path(str(args.out)))
    runs = run_walk_forward(config, args.walk_forward, out, progress=lambda line: print(f"  {line}", flush=True))
    print(write_walk_forward_report(runs, config, out).summary())
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", type=Path)
    target.add_argument("--walk-forward", type=int, metavar="K", help="folds to train and test")
    parser.add_argument("--config", type=Path, default=None, help="YAML preset for --walk-forward")
    parser.add_argument("--data", type=Path, default=None, help="OHLCV CSV/Parquet instead of the synthetic market")
    parser.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
