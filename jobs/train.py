"""Train as a Ray job: config -> TorchTrainer on the job's cluster -> best checkpoint path (or --json summary).

    RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/smoke.yaml [key=value ...] [--json]

Starting a loopback-only head node for that (see README, "Training"):

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address=127.0.0.1 --port=6380 \\
        --dashboard-host=127.0.0.1 --dashboard-port=8265 --include-dashboard=true

The job runs from a temporary copy of the working dir, so a relative `train.storage_path` is taken relative
to ~/ray_results (Ray's default storage), not to that copy; on a multi-node cluster pass a shared path or a
URI (`train.storage_path=s3://bucket/hrm-runs`). Submitting again with the same `train.name` and storage
path resumes the run after its latest checkpoint. The package is imported from this checkout's `platform/`
and shipped to the training workers (jobs/runtime.py, as for every job), so nothing needs to be installed for
it on the cluster beyond Ray and the dependencies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.runtime import connect_job_cluster, job_storage_path, use_this_checkout


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    use_this_checkout()
    from hrm_platform.config import ConfigError, load_config
    from hrm_platform.training.trainer import TrainingError, print_summary, run_training

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"jobs.train: {error}", file=sys.stderr)
        return 2
    config.train.storage_path = job_storage_path(config.train.storage_path)
    # rank 0's progress lines come through a queue either way. Run directly (no RAY_ADDRESS), run_training
    # starts an embedded loopback cluster, as `hrm train` does.
    connect_job_cluster(log_to_driver=args.verbose)
    try:
        summary = run_training(config, quiet=args.json, verbose=args.verbose)
    except ConfigError as error:  # a finished run, or one trained with other settings (training/run_dir.py)
        print(f"jobs.train: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"jobs.train: {error}", file=sys.stderr)
        return 1
    print_summary(summary, as_json=args.json)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="YAML preset, e.g. jobs/configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    parser.add_argument("--verbose", action="store_true", help="also forward the Ray workers' own logs")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
