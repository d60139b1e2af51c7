"""The serving manifest: what `hrm export` chose for a checkpoint and the sha256 of every artefact.

    <checkpoint>/serving/serving_manifest.json     written by export (`write_serving_manifest`)
    <checkpoint>/serving/<artefact>                 read by replicas after `verified_artefacts`

The writer and the reader live here together: a manifest belongs to one model version and one torch build,
and a replica ignores one that belongs to another (logged) rather than load artefacts built for it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from hrm_platform.checkpoint import file_sha256
from hrm_platform.serving.variants import variant_info

logger = logging.getLogger(__name__)

SERVING_DIR = "serving"
SERVING_MANIFEST = "serving_manifest.json"
SERVING_FORMAT_VERSION = 1


class ManifestError(RuntimeError):
    """A serving manifest or artefact that cannot be trusted; the message names the file."""


def serving_dir(checkpoint_dir: Path) -> Path:
    return Path(checkpoint_dir) / SERVING_DIR


def write_serving_manifest(path: Path, model_version: str, chosen: str | None, content: dict[str, Any]) -> Path:
    """Write atomically (a replica never reads half a manifest): format, model version, torch build, the
    choice, and `content` (export's figures; `files` maps each artefact to its sha256)."""
    manifest = {
        "format_version": SERVING_FORMAT_VERSION,
        "model_version": model_version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "chosen": chosen,
        **content,
    }
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2, allow_nan=False, default=_json_default) + "\n")
    partial.replace(path)
    return path


def read_serving_manifest(checkpoint_dir: Path, model_version: str) -> dict[str, Any] | None:
    """The export's manifest when it exists and belongs to this model version and torch build, else None."""
    path = serving_dir(checkpoint_dir) / SERVING_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON ({error}); run `hrm export` again") from None
    if manifest.get("format_version") != SERVING_FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.get('format_version')!r}, expected {SERVING_FORMAT_VERSION}"
        )
    if manifest.get("model_version") != model_version:
        logger.warning("%s belongs to model %s, not %s: ignored", path, manifest.get("model_version"), model_version)
        return None
    if manifest.get("torch_version") != torch.__version__:
        logger.warning(
            "%s was exported with torch %s, this is %s: ignored", path, manifest.get("torch_version"), torch.__version__
        )
        return None
    return manifest


def exported_choice(serving: dict[str, Any] | None, checkpoint_dir: Path) -> str:
    """The variant export chose, or eager when there is no (usable) manifest or no variant passed."""
    if serving is None or not serving.get("chosen"):
        logger.info(
            "no serving manifest for %s: serving eager fp32 (run `hrm export` for a faster engine)", checkpoint_dir
        )
        return "eager"
    return serving["chosen"]


def verified_artefacts(checkpoint_dir: Path, serving: dict[str, Any] | None, variant: str) -> Path:
    """The serving directory after checking the sha256 of every artefact this variant loads."""
    directory = serving_dir(checkpoint_dir)
    if serving is None:
        raise ManifestError(f"variant {variant!r} needs `hrm export --checkpoint {checkpoint_dir}` first")
    listed = serving.get("files", {})
    for name in variant_info(variant).artefacts:
        if name not in listed:
            raise ManifestError(f"{directory / SERVING_MANIFEST} does not list {name}; the export skipped {variant!r}")
        path = directory / name
        if not path.is_file():
            raise ManifestError(f"{path} is listed in {SERVING_MANIFEST} but missing")
        if file_sha256(path) != listed[name]:
            raise ManifestError(f"{path} failed its integrity check (sha256 differs from {SERVING_MANIFEST})")
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
