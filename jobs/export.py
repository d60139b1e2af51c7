"""Export a checkpoint's inference engine as a Ray job (or plainly with `python -m jobs.export`).

    ray job submit --working-dir . -- python -m jobs.export --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003
    ray job submit --working-dir . -- python -m jobs.export --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --variants eager int8 jit_int8

Builds every engine variant, measures batch-1/batch-32 latency side by side, checks agreement with eager
fp32 on held-out windows, and writes CHECKPOINT/serving/serving_manifest.json with the chosen variant. Run it
on the kind of node that will serve (the figures and the artefacts belong to that CPU/GPU and torch build);
the checkpoint path must be writable from there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hrm_platform.serving.export import export_engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=None, help="variants to try (default: all that run here)")
    args = parser.parse_args(argv)
    print(export_engine(args.checkpoint, variants=args.variants).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
