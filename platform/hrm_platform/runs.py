"""`hrm runs`: the training runs under a storage folder, with their best checkpoint and what was exported.

    hrm runs                              # train.storage_path (runs/)
    hrm runs artifacts/demo /tmp/x --json

A run is a folder holding `epoch_NNNN/manifest.json` checkpoints: `<train.storage_path>/<train.name>/` of
`hrm train`, `<out>/runs/<name>-fold<k>/` of a walk-forward, the `out_dir` of `train_local`. Folders given
are searched a few levels down. Every manifest is verified (`load_manifest`): a damaged checkpoint is listed
as damaged, with the reason, and left out of the best-checkpoint choice. The best checkpoint is the one the
trainer keeps as best: highest validation accuracy, the later epoch on a tie.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hrm_platform.config import TrainConfig

SEARCH_DEPTH = 3  # levels below a given folder: artifacts/demo -> report/runs/demo-fold0
NOT_EXPORTED = "-"
_SKIPPED_DIRS = {"tensorboard", "serving"}  # inside a run or a checkpoint, never runs themselves


@dataclass
class RunInfo:
    name: str
    path: str
    epochs_completed: int | None  # the latest intact checkpoint's epoch
    epochs_configured: int | None  # that checkpoint's train.epochs
    finished: bool
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    best_train_loss: float | None = None
    best_checkpoint: str | None = None
    model_version: str | None = None  # the best checkpoint's
    exported_variant: str = NOT_EXPORTED  # what `hrm export` chose for the best checkpoint
    damaged: list[str] = field(default_factory=list)  # "checkpoint <dir>: <reason>", one per damaged file

    @property
    def status(self) -> str:
        if self.damaged:
            return "damaged"
        return "finished" if self.finished else "unfinished"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


# ---------------------------------------------------------------------------------------------- finding


def list_runs(root: Path) -> list[RunInfo]:
    """Every run at or below `root` (up to SEARCH_DEPTH levels), by path."""
    return [describe_run(run_dir) for run_dir in sorted(find_run_dirs(Path(root)))]


def find_run_dirs(folder: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders holding checkpoints; a run's own sub-folders are not searched."""
    if _checkpoint_dirs(folder):
        return [folder]
    if depth == 0:
        return []
    children = [child for child in folder.iterdir() if child.is_dir() and not _skipped(child)]
    return [run_dir for child in children for run_dir in find_run_dirs(child, depth - 1)]


def _skipped(folder: Path) -> bool:
    """Hidden folders (a checkpoint being written, Ray's markers) and the trackers' or export's folders."""
    return folder.name.startswith(".") or folder.name in _SKIPPED_DIRS


def _checkpoint_dirs(run_dir: Path) -> list[Path]:
    from hrm_platform.checkpoint import MANIFEST_FILE

    return sorted(path for path in run_dir.glob("epoch_*") if (path / MANIFEST_FILE).is_file())


# ---------------------------------------------------------------------------------------------- describing


def describe_run(run_dir: Path) -> RunInfo:
    """Verify every checkpoint of the run; summarise the intact ones and name the damaged ones."""
    from hrm_platform.checkpoint import CheckpointError, load_manifest

    intact: list[tuple[Path, dict[str, Any]]] = []
    damaged: list[str] = []
    for checkpoint in _checkpoint_dirs(run_dir):
        try:
            intact.append((checkpoint, load_manifest(checkpoint)))
        except CheckpointError as error:
            damaged.append(str(error))
    info = RunInfo(name=run_dir.name, path=str(run_dir), epochs_completed=None, epochs_configured=None,
                   finished=False, damaged=damaged)
    if intact:
        _summarise(info, intact)
    return info


def _summarise(info: RunInfo, intact: list[tuple[Path, dict[str, Any]]]) -> None:
    from hrm_platform.training.fit import checkpoint_score

    _, latest = max(intact, key=lambda pair: int(pair[1]["epoch"]))
    info.epochs_completed = int(latest["epoch"])
    info.epochs_configured = latest["config"].get("train", {}).get("epochs")
    info.finished = info.epochs_configured is not None and info.epochs_completed >= info.epochs_configured
    best_dir, best = max(intact, key=lambda pair: (checkpoint_score(pair[1]["metrics"]["latest"]), pair[1]["epoch"]))
    metrics = best["metrics"]["latest"]
    info.best_epoch = int(best["epoch"])
    info.best_val_accuracy = metrics.get("val_accuracy")
    info.best_train_loss = metrics.get("train_loss")
    info.best_checkpoint = str(best_dir)
    info.model_version = best["model_version"]
    info.exported_variant = _exported_variant(best_dir, best["model_version"], info.damaged)


def _exported_variant(checkpoint: Path, model_version: str, damaged: list[str]) -> str:
    """export's choice for this model version ("eager" when no variant passed its checks), else "-"."""
    from hrm_platform.serving.manifest import ManifestError, read_serving_manifest

    try:
        serving = read_serving_manifest(checkpoint, model_version)
    except ManifestError as error:
        damaged.append(str(error))
        return NOT_EXPORTED
    if serving is None:
        return NOT_EXPORTED
    return serving.get("chosen") or "eager"


# ---------------------------------------------------------------------------------------------- showing

_COLUMNS = ("RUN", "EPOCHS", "BEST", "VAL_ACC", "TRAIN_LOSS", "MODEL", "EXPORTED", "STATUS", "BEST CHECKPOINT")


def render_runs(runs: list[RunInfo]) -> str:
    """A table, one run a line, then one line per damaged checkpoint."""
    rows = [_COLUMNS, *(_row(run) for run in runs)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{run.name}: damaged: {reason}" for run in runs for reason in run.damaged]
    return "\n".join(lines)


def _row(run: RunInfo) -> tuple[str, ...]:
    return (
        run.name,
        f"{_text(run.epochs_completed)}/{_text(run.epochs_configured)}",
        _text(run.best_epoch),
        _number(run.best_val_accuracy),
        _number(run.best_train_loss),
        run.model_version or "-",
        run.exported_variant,
        run.status,
        run.best_checkpoint or "-",
    )


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------- command


def add_runs_command(commands: argparse._SubParsersAction) -> None:
    """Register `hrm runs [PATH ...] [--json]` on the `hrm` parser's subcommands."""
    default = TrainConfig.model_fields["storage_path"].default
    runs = commands.add_parser(
        "runs", help="list training runs: epochs, best checkpoint and its metrics, exported variant",
        description="List the training runs (folders of epoch_NNNN checkpoints) at or below each PATH, searched "
        f"{SEARCH_DEPTH} levels down: epochs completed/configured, the best epoch by validation accuracy with "
        "its metrics and checkpoint, the model version, and the variant `hrm export` chose for it. Every "
        "checkpoint's hashes are verified; a damaged one is named with the reason.",
    )
    runs.add_argument(
        "paths", nargs="*", type=Path, default=None, metavar="PATH",
        help=f"a run folder or a folder holding runs (default: {default}, train.storage_path's default)",
    )
    runs.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    runs.set_defaults(handler=_cmd_runs)


def _cmd_runs(args: argparse.Namespace) -> int:
    default = Path(TrainConfig.model_fields["storage_path"].default)
    paths = args.paths or [default]
    missing = [path for path in paths if not path.is_dir() and path != default]
    if missing:
        print(f"hrm runs: no such folder: {', '.join(str(path) for path in missing)}", file=sys.stderr)
        return 2
    runs = [run for path in paths if path.is_dir() for run in list_runs(path)]
    if args.json:
        print(json.dumps([run.to_dict() for run in runs], indent=2, allow_nan=False))
    elif runs:
        print(render_runs(runs))
    else:
        where = ", ".join(str(path) for path in paths)
        print(f"no runs under {where}; train one with `hrm train --config jobs/configs/smoke.yaml` "
              f"(train.storage_path sets where runs go)")
    return 0
