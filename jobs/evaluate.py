r"""Backtest a checkpoint, or walk forward over K folds, as a Ray job (or plainly with `python -m jobs.evaluate`).

    ray job submit --working-dir . -- python -m jobs.evaluate \
        --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --out artifacts/eval
    ray job submit --working-dir . -- python -m jobs.evaluate \
        --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --data bars.csv \
        --out artifacts/eval
    ray job submit --working-dir . -- python -m jobs.evaluate \
        --checkpoint s3://YOUR-BUCKET/hrm-runs/hrm-gpu/epoch_0012 --out artifacts/eval
    ray job submit --working-dir . -- python -m jobs.evaluate --walk-forward 4 --config jobs/configs/demo.yaml \
        --out walk_forward [key=value ...]

--checkpoint is the checkpoint that `hrm train` or `jobs.train` printed: a path readable from the node that
runs the job (one inside the working dir), or the URI of a run in a bucket, which is copied into the node's
cache and verified there (hrm_platform/storage.py). --walk-forward trains one model per fold on the job's
cluster (folds run concurrently as it has room; their runs go under OUT/runs, so give OUT as an absolute path
or a relative one, which is taken under ~/ray_results as for jobs.train; OUT is a local folder, so on a
multi-node cluster the folds' runs are not on storage every node reaches). Writes OUT/metrics.json, OUT/*.png
and OUT/report.md; prints the summary table. The package is imported from this checkout's `platform/` and
shipped to the cluster's workers (jobs/runtime.py, as for every job).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.runtime import connect_job_cluster, job_storage_path, use_this_checkout


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    use_this_checkout()
    connect_job_cluster(log_to_driver=False)
    if args.walk_forward is not None:
        return _walk_forward(args)
    from hrm_platform.evaluation.split_evaluation import evaluate_checkpoint
    from hrm_platform.storage import CheckpointError, local_checkpoint

    try:
        checkpoint = local_checkpoint(args.checkpoint)  # a URI: its verified copy on this node
        report = evaluate_checkpoint(checkpoint, args.out, data_path=args.data, overrides=args.overrides)
    except (CheckpointError, ValueError) as error:  # unreadable or damaged checkpoint, a bad override or data file
        print(f"jobs.evaluate: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _walk_forward(args: argparse.Namespace) -> int:
    from hrm_platform.config import ConfigError, load_config
    from hrm_platform.evaluation.walk_forward import run_walk_forward
    from hrm_platform.evaluation.walk_forward_report import write_walk_forward_report

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
    target.add_argument("--checkpoint", metavar="DIR|URI")
    target.add_argument("--walk-forward", type=int, metavar="K", help="folds to train and test")
    parser.add_argument("--config", type=Path, default=None, help="YAML preset for --walk-forward")
    parser.add_argument("--data", type=Path, default=None, help="OHLCV CSV/Parquet instead of the synthetic market")
    parser.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
