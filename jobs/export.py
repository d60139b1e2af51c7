"""Export a checkpoint's inference engine as a Ray job (or plainly with `python -m jobs.export`).

    ray job submit --working-dir . -- python -m jobs.export \\
        --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003
    ray job submit --working-dir . -- python -m jobs.export \\
        --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --variants eager int8 jit_int8
    ray job submit --entrypoint-num-gpus=1 --working-dir . -- python -m jobs.export \\
        --checkpoint s3://YOUR-BUCKET/hrm-runs/hrm-gpu/epoch_0012 --variants eager bf16 [export.key=value ...]

Builds every engine variant, measures batch-1/batch-32 latency side by side, checks agreement with eager
fp32 on held-out windows, and writes CHECKPOINT/serving/serving_manifest.json with the chosen variant. Run it
on the kind of node that will serve (the figures and the artefacts belong to that CPU/GPU and torch build;
`--entrypoint-num-gpus=1` puts the job on a GPU node). A local checkpoint path must be writable from there; a
URI is copied and verified into the node's cache (storage.py), exported there, and its serving/ folder is
uploaded beside the checkpoint, where replicas reading that URI find it. The package is imported from this
checkout's `platform/`, in this process and in the fresh processes that time a replica's start
(jobs/runtime.py, as for every job).
"""

from __future__ import annotations

import argparse
import sys

from jobs.runtime import use_this_checkout


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    use_this_checkout()  # no Ray workers here: the export runs in this process and its children
    from hrm_platform.serving.engine import EngineError
    from hrm_platform.serving.export import export_engine
    from hrm_platform.serving.variants import VariantError
    from hrm_platform.storage import CheckpointError, local_checkpoint, publish_export

    named = args.variants or []  # `--variants a b key=value` puts the override here: take it back out
    variants = [name for name in named if "=" not in name] or None
    overrides = [*args.overrides, *(item for item in named if "=" in item)]
    try:
        checkpoint = local_checkpoint(args.checkpoint)
        report = export_engine(checkpoint, variants=variants, overrides=overrides)
        publish_export(checkpoint, args.checkpoint)
    except (CheckpointError, EngineError, VariantError, OSError, ValueError) as error:
        print(f"jobs.export: {error}", file=sys.stderr)  # as `hrm export` reports them
        return 2
    print(report.summary())
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", metavar="DIR|URI", required=True)
    parser.add_argument("--variants", nargs="*", default=None, help="variants to try (default: all that run here)")
    parser.add_argument("overrides", nargs="*", metavar="export.key=value", help="export settings")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
