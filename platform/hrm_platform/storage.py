"""Checkpoints by URI: a checkpoint directory on any filesystem pyarrow reads becomes a verified local copy.

    local_checkpoint("s3://bucket/hrm-runs/hrm-gpu/epoch_0012")   # -> <cache>/epoch_0012-<content key>, verified
    local_checkpoint("runs/smoke/epoch_0002")                      # a plain path: returned as given
    publish_export(local_dir, "s3://bucket/hrm-runs/hrm-gpu/epoch_0012")   # `hrm export`'s serving/ back beside it

On a cluster, training writes checkpoints where `train.storage_path` points (a bucket URI), and serving,
export and evaluation read them from there by the same URI. A URI is anything
`pyarrow.fs.FileSystem.from_uri` reads (s3://, gs://, hdfs://, file://...). Its directory is copied into the
cache (`serve.checkpoint_cache_dir`), then verified with `checkpoint.load_manifest` (every file's sha256
against manifest.json) and the serving manifest's artefact hashes, before anything is deserialised; a copy
that fails is deleted and refused with CheckpointError, as a damaged local checkpoint is.

The cache folder is named after the checkpoint and the sha256 of the URI and of its manifests, so an
unchanged checkpoint is re-verified and reused without a copy, while a changed one (a new export) lands in a
folder of its own and never disturbs a replica still reading the old one. Copies are made in a hidden
staging folder and renamed into place, so two replicas of one node may fetch the same URI at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hrm_platform.checkpoint import MANIFEST_FILE, CheckpointError, file_sha256, load_manifest
from hrm_platform.config import ServeConfig
from hrm_platform.serving.manifest import SERVING_DIR, SERVING_MANIFEST
from hrm_platform.uri import is_uri

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

DEFAULT_CACHE_DIR: str = ServeConfig.model_fields["checkpoint_cache_dir"].default
_SERVING_MANIFEST_PATH = f"{SERVING_DIR}/{SERVING_MANIFEST}"  # inside a checkpoint directory


def checkpoint_location(location: str | Path) -> str:
    """A checkpoint named for another process (a replica, a job): a URI verbatim, a local path made absolute."""
    return location if is_uri(location) else str(Path(location).resolve())


def local_checkpoint(location: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR, verify: bool = False) -> Path:
    """A local checkpoint directory for `location`: a URI's verified copy in `cache_dir`, or a plain path as
    given (with `verify`, its checkpoint hashes are checked now; the loader checks them anyway, and the serving
    artefacts as it loads them). Raises CheckpointError naming the location when it cannot be read or verified."""
    if not is_uri(location):
        if verify:
            load_manifest(location)
        return Path(location)
    filesystem, root = _open(location)
    target = Path(cache_dir).expanduser() / _cache_name(filesystem, root, location)
    if target.is_dir() and _verifies(target):
        return target  # fetched before, and its files still match their hashes
    shutil.rmtree(target, ignore_errors=True)  # absent, or damaged since: fetch again
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _copy(filesystem, root, staging, location)
        _verify_copy(staging, location)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def publish_export(local_dir: Path, location: str | Path) -> None:
    """After `hrm export` of a URI's local copy: upload its serving/ folder beside the checkpoint, so that
    replicas reading the URI get the chosen engine. Nothing to do for a plain path (export wrote in place).
    The serving manifest goes last: a reader that sees it finds every artefact it lists."""
    if not is_uri(location):
        return
    from pyarrow.fs import LocalFileSystem, copy_files

    filesystem, root = _open(location)
    serving = Path(local_dir) / SERVING_DIR
    files = sorted(serving.iterdir(), key=lambda path: path.name == SERVING_MANIFEST)  # (artefacts..., manifest)
    try:
        filesystem.create_dir(f"{root}/{SERVING_DIR}", recursive=True)  # a no-op on object stores
        for path in files:
            copy_files(str(path), f"{root}/{SERVING_DIR}/{path.name}", LocalFileSystem(), filesystem)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        _refuse(location, f"cannot upload {serving}: {error}")


# ------------------------------------------------------------------------------------------------ helpers


def _open(location: str) -> tuple[FileSystem, str]:
    """(filesystem, path inside it) of a URI; the checkpoint's manifest must be there."""
    from pyarrow.fs import FileSystem, FileType

    try:
        filesystem, root = FileSystem.from_uri(location)
        found = filesystem.get_file_info(f"{root.rstrip('/')}/{MANIFEST_FILE}").type
    except (OSError, ValueError) as error:  # unknown scheme, no credentials, unreachable bucket
        _refuse(location, f"cannot read it: {error}")
    if found != FileType.File:
        _refuse(location, f"not a checkpoint directory ({MANIFEST_FILE} is missing)")
    return filesystem, root.rstrip("/")


def _cache_name(filesystem: FileSystem, root: str, location: str) -> str:
    """`<checkpoint name>-<sha256 of the URI, manifest.json and the serving manifest>` (16 hex digits)."""
    digest = hashlib.sha256(location.encode())
    for name in (MANIFEST_FILE, _SERVING_MANIFEST_PATH):
        try:
            with filesystem.open_input_stream(f"{root}/{name}") as stream:
                digest.update(stream.read())
        except FileNotFoundError:  # never exported
            digest.update(b"-")
        except (OSError, ValueError) as error:
            _refuse(location, f"cannot read {name}: {error}")
    return f"{Path(root).name}-{digest.hexdigest()[:16]}"


def _copy(filesystem: FileSystem, root: str, destination: Path, location: str) -> None:
    from pyarrow.fs import LocalFileSystem, copy_files

    destination.mkdir(parents=True)  # copy_files creates the folders below it, not the destination itself
    try:
        copy_files(root, str(destination), filesystem, LocalFileSystem())
    except (OSError, ValueError) as error:
        _refuse(location, f"copy to {destination} failed: {error}")


def _verify(directory: Path) -> None:
    """Every hash of the checkpoint (checkpoint.load_manifest) and of the artefacts export listed."""
    load_manifest(directory)
    for name, expected in _serving_files(directory).items():
        path = directory / SERVING_DIR / name
        if not path.is_file() or file_sha256(path) != expected:
            raise CheckpointError(
                f"checkpoint {directory}: {SERVING_DIR}/{name} is missing or failed its integrity check (sha256 "
                f"listed in {SERVING_MANIFEST})"
            )


def _verify_copy(directory: Path, location: str) -> None:
    try:
        _verify(directory)
    except CheckpointError as error:
        _refuse(location, f"its copy does not verify, refused: {error}")


def _verifies(directory: Path) -> bool:
    try:
        _verify(directory)
    except CheckpointError:
        return False
    return True


def _serving_files(directory: Path) -> dict[str, str]:
    """{artefact name: sha256} of the serving manifest, or {} when never exported."""
    path = directory / _SERVING_MANIFEST_PATH
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text()).get("files") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {directory}: {path.name} is not a JSON object ({error})") from None
    if any(Path(name).name != name for name in files):
        raise CheckpointError(f"checkpoint {directory}: {path.name} lists a file outside {SERVING_DIR}/")
    return files


def _move_into_place(staging: Path, target: Path) -> None:
    """rename(2) of the verified copy; another process that placed the same content first wins."""
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise


def _refuse(location: str, reason: str) -> NoReturn:
    raise CheckpointError(f"checkpoint {location}: {reason}") from None
