"""An existing run under <train.storage_path>/<train.name>: whether a new request can continue it.

Starting a run again with the same name continues it (Ray Train resumes from its latest checkpoint). Checked
here, before Ray starts: a run that already finished `train.epochs` has nothing to train, and a run trained
with other model, data or optimisation settings cannot be continued with these. Both are refused with a
ConfigError that says what to change, instead of spending Ray's start-up to print the old result as new
(or to fail inside a worker). Only local storage is inspected; a URI is left to Ray.
"""

from __future__ import annotations

from pathlib import Path

from hrm_platform.checkpoint import MANIFEST_FILE, load_manifest
from hrm_platform.config import ConfigError, PlatformConfig, validate_config

# train.* settings a continued run must share with the checkpoint (the rest, such as epochs, workers,
# checkpoint counts or validation frequency, may change between two legs of one run).
CONTINUED_TRAIN_KEYS = (
    "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "quantity_loss_weight", "q_loss_weight",
    "precision", "seed", "compile",
)


def latest_checkpoint_of_run(storage_path: str, name: str) -> Path | None:
    """The newest complete checkpoint of a run on local storage (a URI: None)."""
    if "://" in storage_path:
        return None
    run_dir = Path(storage_path).expanduser() / name
    found = sorted(path for path in run_dir.glob("epoch_*") if (path / MANIFEST_FILE).is_file())
    return found[-1] if found else None


def check_run_can_continue(config: PlatformConfig) -> None:
    """Refuse (ConfigError) a run that is finished, or whose checkpoint has other settings; pass otherwise."""
    train = config.train
    if run_is_finished(config):
        latest = latest_checkpoint_of_run(train.storage_path, train.name)
        finished = int(load_manifest(latest)["epoch"])
        raise ConfigError(
            f"run {train.name!r} already finished at epoch {finished}/{train.epochs} ({latest}); nothing to train "
            f"(raise train.epochs to continue it, or use a new train.name)"
        )


def run_is_finished(config: PlatformConfig) -> bool:
    """Whether the run has trained `train.epochs` already with these settings; ConfigError if it has other
    settings (continuing it would mix them); False when there is no run yet or it can continue."""
    train = config.train
    latest = latest_checkpoint_of_run(train.storage_path, train.name)
    if latest is None:
        return False
    manifest = load_manifest(latest)  # hashes verified; the weights are not needed here
    saved = validate_config(manifest["config"], source=f"{latest / MANIFEST_FILE} config")
    changed = [f"model.{key}" for key in type(config.model).model_fields
               if getattr(saved.model, key) != getattr(config.model, key)]
    changed += [f"data.{key}" for key in type(config.data).model_fields
                if getattr(saved.data, key) != getattr(config.data, key)]
    changed += [f"train.{key}" for key in CONTINUED_TRAIN_KEYS if getattr(saved.train, key) != getattr(train, key)]
    if changed:
        was = ", ".join(f"{key}={_value(saved, key)!r}" for key in changed)
        raise ConfigError(
            f"run {train.name!r} in {latest.parent} was trained with {was}; starting it again would continue it "
            f"with other settings. Use a new train.name, or restore those values"
        )
    return int(manifest["epoch"]) >= train.epochs


def _value(config: PlatformConfig, dotted: str) -> object:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)
