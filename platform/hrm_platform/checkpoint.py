"""The checkpoint directory: self-describing, integrity-checked, loaded without unpickling code.

    <checkpoint>/
      model.pt            the model's state_dict (tensors only)
      ema.pt              the moving average of its weights, the same keys (optional; train.ema_decay)
      training_state.pt   optimizer, scheduler, epoch, step, RNG state (optional; present for resumable runs)
      manifest.json       format_version, model_version, created_at, git_revision, config, feature_spec,
                          data (source, spans, splits, bar frequency), n_features, window, epoch,
                          metrics {latest, history}, files {name: sha256}, inference_weights

`inference_weights` names the weights inference uses (`load_model`): ema.pt when there is one, else
model.pt (also for older checkpoints without the key); `model_version` is the start of that file's sha256,
so the served model's version names the weights it serves.

Writing goes to a hidden temporary directory beside the target, which is renamed into place at the end, so
a reader never sees half a checkpoint. Reading verifies the format version and every file's sha256 before
anything is deserialised, and `torch.load(weights_only=True)` refuses anything but tensors and plain
containers. Ray Train's `Checkpoint.from_directory` wraps this directory as it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hrm_platform.config import PlatformConfig

if TYPE_CHECKING:
    from hrm_platform.data.features import FeatureSpec
    from hrm_platform.model.hrm import HRM

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
EMA_FILE = "ema.pt"
TRAINING_STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"
_HASH_CHUNK_BYTES = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or read; the message names the directory and the file."""


@dataclass
class LoadedCheckpoint:
    directory: Path
    manifest: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None
    config: PlatformConfig
    feature_spec: FeatureSpec
    ema_state: dict[str, torch.Tensor] | None = None  # the weights' moving average, when trained with one

    @property
    def inference_state(self) -> dict[str, torch.Tensor]:
        """The weights inference uses: the moving average when the checkpoint has one, else the model's."""
        return self.ema_state if self.ema_state is not None else self.model_state

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def epoch(self) -> int:
        return self.manifest["epoch"]

    @property
    def data_description(self) -> dict[str, Any]:
        """What the model was trained on (`DatasetBundle.description()`); empty for older checkpoints."""
        return self.manifest.get("data") or {}

    @property
    def metrics(self) -> dict[str, Any]:
        """The latest epoch's metrics (the per-epoch history is in manifest["metrics"]["history"])."""
        return self.manifest["metrics"]["latest"]


# ---------------------------------------------------------------------------------------------- writing


def save_checkpoint(
    directory: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: PlatformConfig,
    feature_spec: FeatureSpec | Mapping[str, Any],
    epoch: int,
    metrics: Mapping[str, Any],
    training_state: Mapping[str, Any] | None = None,
    ema_state: Mapping[str, torch.Tensor] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    n_features: int | None = None,
    window: int | None = None,
    data_description: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to `directory` atomically and return its path.

    `metrics` are the latest epoch's; `history` the per-epoch list (defaults to `[metrics]`). `ema_state`,
    the weights' moving average, becomes the checkpoint's inference weights. `n_features` and `window`
    default to the feature spec's; `data_description` is `DatasetBundle.description()`. An existing directory
    at the target is replaced only after the new one is complete.
    """
    target = Path(directory).absolute()
    spec = _feature_spec_dict(feature_spec)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        files = {MODEL_FILE: _save_tensors(dict(model_state), staging / MODEL_FILE)}
        if ema_state is not None:
            files[EMA_FILE] = _save_tensors(dict(ema_state), staging / EMA_FILE)
        if training_state is not None:
            files[TRAINING_STATE_FILE] = _save_tensors(dict(training_state), staging / TRAINING_STATE_FILE)
        inference_weights = EMA_FILE if ema_state is not None else MODEL_FILE
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": files[inference_weights][:12],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_revision": git_revision(),
            "config": config.model_dump(mode="json"),
            "feature_spec": spec,
            "data": _json_safe(dict(data_description or {})),
            "n_features": int(n_features if n_features is not None else len(spec["names"])),
            "window": int(window if window is not None else spec["window"]),
            "epoch": int(epoch),
            "metrics": {"latest": _json_safe(metrics), "history": _json_safe(list(history) or [metrics])},
            "files": files,
            "inference_weights": inference_weights,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _save_tensors(payload: dict[str, Any], path: Path) -> str:
    """torch.save then fsync; returns the file's sha256."""
    with path.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return file_sha256(path)


def _move_into_place(staging: Path, target: Path) -> None:
    """rename(2) is atomic for a fresh target; an old checkpoint there is moved aside first, then removed."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _feature_spec_dict(feature_spec: Any) -> dict[str, Any]:
    spec = feature_spec.to_dict() if hasattr(feature_spec, "to_dict") else dict(feature_spec)
    missing = {"names", "window"} - spec.keys()
    if missing:
        raise CheckpointError(f"feature_spec lacks {sorted(missing)}; pass FeatureSpec or FeatureSpec.to_dict()")
    return spec


def _json_safe(value: Any) -> Any:
    """Tensors/numpy scalars to Python numbers, non-finite floats to None (manifest.json is strict JSON)."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if hasattr(value, "tolist"):  # torch.Tensor, np.ndarray, np.generic
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """HEAD of the repository this package lives in, or None outside a git checkout (e.g. a Ray job copy)."""
    package_dir = Path(__file__).resolve().parent
    try:
        completed = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = completed.stdout.strip()
    return revision if completed.returncode == 0 and len(revision) == 40 else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """Read manifest.json and verify the format version and every listed file's sha256.

    Raises CheckpointError naming the directory and the file for a missing or unreadable manifest, an
    unknown format version, a missing file, or a hash mismatch (tampered or truncated file).
    """
    root = Path(directory)
    manifest_path = root / MANIFEST_FILE
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root}: not a directory")
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {root}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {root}: {MANIFEST_FILE} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"checkpoint {root}: {MANIFEST_FILE} must hold a JSON object")
    _check_format_version(root, manifest)
    _check_required_keys(root, manifest)
    _check_file_hashes(root, manifest["files"])
    weights = inference_weights(manifest)
    if manifest["model_version"] != manifest["files"][weights][:12]:
        raise CheckpointError(
            f"checkpoint {root}: {MANIFEST_FILE} model_version {manifest['model_version']!r} does not match "
            f"the sha256 of {weights}"
        )
    return manifest


def inference_weights(manifest: Mapping[str, Any]) -> str:
    """The weights file inference loads: the manifest's `inference_weights`; model.pt for older checkpoints."""
    return manifest.get("inference_weights", MODEL_FILE)


def _check_format_version(root: Path, manifest: dict[str, Any]) -> None:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {root}: {MANIFEST_FILE} has format_version {version!r}; this build reads "
            f"format_version {FORMAT_VERSION} only"
        )


_REQUIRED_KEYS = ("model_version", "config", "feature_spec", "n_features", "window", "epoch", "metrics", "files")


def _check_required_keys(root: Path, manifest: dict[str, Any]) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise CheckpointError(f"checkpoint {root}: {MANIFEST_FILE} lacks {missing}")
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"checkpoint {root}: {MANIFEST_FILE} 'files' does not list {MODEL_FILE}")
    weights = inference_weights(manifest)
    if weights not in (MODEL_FILE, EMA_FILE) or weights not in files:
        raise CheckpointError(
            f"checkpoint {root}: {MANIFEST_FILE} inference_weights {weights!r} is not {MODEL_FILE} or {EMA_FILE} "
            "listed in 'files'"
        )


def _check_file_hashes(root: Path, files: dict[str, str]) -> None:
    for name, expected in files.items():
        path = root / name
        if Path(name).name != name:
            raise CheckpointError(f"checkpoint {root}: {MANIFEST_FILE} lists {name!r}, which is not a plain file name")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {root}: {name} is listed in {MANIFEST_FILE} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint {root}: {name} failed its integrity check (sha256 {actual[:12]}..., manifest says "
                f"{str(expected)[:12]}...); the file was modified or truncated after it was written"
            )


def load_checkpoint(directory: str | Path, with_training_state: bool = False) -> LoadedCheckpoint:
    """Verify, then load the weights, their moving average if saved (and optionally the training state) with
    `weights_only=True`."""
    from hrm_platform.config import validate_config
    from hrm_platform.data.features import FeatureSpec

    root = Path(directory)
    manifest = load_manifest(root)
    model_state = _load_tensors(root, MODEL_FILE)
    ema_state = _load_tensors(root, EMA_FILE) if EMA_FILE in manifest["files"] else None
    training_state = None
    if with_training_state:
        if TRAINING_STATE_FILE not in manifest["files"]:
            raise CheckpointError(f"checkpoint {root}: has no {TRAINING_STATE_FILE}, so it cannot resume a run")
        training_state = _load_tensors(root, TRAINING_STATE_FILE)
    return LoadedCheckpoint(
        directory=root,
        manifest=manifest,
        model_state=model_state,
        training_state=training_state,
        config=validate_config(manifest["config"], source=f"{root / MANIFEST_FILE} config"),
        feature_spec=FeatureSpec.from_dict(manifest["feature_spec"]),
        ema_state=ema_state,
    )


def _load_tensors(root: Path, name: str) -> dict[str, Any]:
    try:
        payload = torch.load(root / name, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only raises UnpicklingError; a corrupt zip raises RuntimeError
        raise CheckpointError(
            f"checkpoint {root}: {name} cannot be loaded as plain tensors (weights_only=True): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {root}: {name} holds {type(payload).__name__}, expected a dict")
    return payload


def load_model(directory: str | Path) -> tuple[HRM, LoadedCheckpoint]:
    """The HRM of a checkpoint with its inference weights (the moving average when it has one, see
    `inference_weights`) loaded strictly, in eval mode on CPU."""
    from hrm_platform.model.hrm import HRM

    loaded = load_checkpoint(directory)
    model = HRM(loaded.config.model, n_features=loaded.manifest["n_features"], window=loaded.manifest["window"])
    try:
        model.load_state_dict(loaded.inference_state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {loaded.directory}: {inference_weights(loaded.manifest)} does not fit the model its "
            f"manifest describes: {error}"
        ) from None
    return model.eval(), loaded
