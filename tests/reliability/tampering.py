"""Ways to damage a checkpoint directory, each applied to a fresh copy of a good one.

Every function takes the copy's path and damages it in place. `TAMPERINGS` maps a name to the damage and
to the words the refusal must contain (the file it names and what is wrong), so a test can check that
the error is clear, not merely that something failed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hrm_platform.checkpoint import MANIFEST_FILE

MANIFEST = MANIFEST_FILE
WEIGHTS = "model.pt"


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_manifest(checkpoint: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    edit(manifest)
    (checkpoint / MANIFEST).write_text(json.dumps(manifest, indent=2))


def flip_weight_byte(checkpoint: Path) -> None:
    """One byte in the middle of model.pt changes: same size, a silently different weight."""
    weights = checkpoint / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def perturb_weights_keep_file_valid(checkpoint: Path) -> None:
    """model.pt rewritten as a valid state_dict with every tensor scaled: loads fine, hash differs."""
    state = torch.load(checkpoint / WEIGHTS, map_location="cpu", weights_only=True)
    torch.save({name: tensor * 1.01 if tensor.is_floating_point() else tensor for name, tensor in state.items()},
               checkpoint / WEIGHTS)


def truncate_weights(checkpoint: Path) -> None:
    weights = checkpoint / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])


def mismatched_manifest_hash(checkpoint: Path) -> None:
    """The manifest lists a hash for model.pt that is not model.pt's."""
    _edit_manifest(checkpoint, lambda manifest: manifest["files"].__setitem__(WEIGHTS, "0" * 64))


def unknown_format_version(checkpoint: Path) -> None:
    _edit_manifest(checkpoint, lambda manifest: manifest.__setitem__("format_version", 999))


def truncated_manifest(checkpoint: Path) -> None:
    text = (checkpoint / MANIFEST).read_text()
    (checkpoint / MANIFEST).write_text(text[: len(text) // 2])


def missing_weights(checkpoint: Path) -> None:
    (checkpoint / WEIGHTS).unlink()


@dataclass(frozen=True)
class Tampering:
    damage: Callable[[Path], None]
    must_mention: tuple[str, ...]  # lower-case words the error message must contain


TAMPERINGS: dict[str, Tampering] = {
    "modified_weights_byte": Tampering(flip_weight_byte, ("model.pt", "integrity")),
    "modified_weights_valid_file": Tampering(perturb_weights_keep_file_valid, ("model.pt", "integrity")),
    "truncated_weights": Tampering(truncate_weights, ("model.pt", "truncated")),
    "manifest_hash_mismatch": Tampering(mismatched_manifest_hash, ("model.pt", "sha256")),
    "unknown_format_version": Tampering(unknown_format_version, ("format_version", "999")),
    "truncated_manifest": Tampering(truncated_manifest, ("manifest.json", "json")),
    "missing_weights": Tampering(missing_weights, ("model.pt", "missing")),
}


def tampered_copy(source: Path, target: Path, name: str) -> Path:
    copy_checkpoint(source, target)
    TAMPERINGS[name].damage(target)
    return target


# ---------------------------------------------------------------------------------------------- pickle


class PickleBomb:
    """Unpickling this runs `exec`, which writes a marker file: proof that code ran during loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        code = f"open({str(self.marker)!r}, 'w').write('code ran while unpickling')"
        return (exec, (code,))


def plant_pickle_bomb(checkpoint: Path, marker: Path) -> None:
    """Replace model.pt with a state_dict holding a PickleBomb, and make the manifest agree with it.

    The hashes are rewritten so that integrity checking passes: only `weights_only=True` loading stands
    between the file and code execution, which is what this tests.
    """
    from hrm_platform.checkpoint import file_sha256

    state = torch.load(checkpoint / WEIGHTS, map_location="cpu", weights_only=True)
    state["payload"] = PickleBomb(marker)
    torch.save(state, checkpoint / WEIGHTS)
    digest = file_sha256(checkpoint / WEIGHTS)

    def agree(manifest: dict) -> None:
        manifest["files"][WEIGHTS] = digest
        manifest["model_version"] = digest[:12]

    _edit_manifest(checkpoint, agree)
