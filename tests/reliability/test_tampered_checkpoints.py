"""A damaged checkpoint is refused with an error naming the file and the problem, by every loader.

Covers the loaders a damaged file can reach: `load_checkpoint` (training resume, evaluation), `load_model`
and `InferenceEngine.from_checkpoint` (serving). The hot-reload half (a running deployment told to switch
to a damaged checkpoint keeps serving the old model) lives in test_serve_faults.py, beside the shared
deployment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hrm_platform.checkpoint import MANIFEST_FILE, CheckpointError, load_checkpoint, load_manifest, load_model
from tests.reliability.tampering import TAMPERINGS, tampered_copy


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_load_checkpoint_refuses_tampered_checkpoint(tampering: str, trained_checkpoint: Path, tmp_path: Path) -> None:
    load_manifest(trained_checkpoint)  # the original is good: the refusal below is due to the damage
    damaged = tampered_copy(trained_checkpoint, tmp_path / tampering, tampering)

    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(damaged)

    message = str(refused.value).lower()
    assert str(damaged).lower() in message, f"error does not name the checkpoint: {refused.value}"
    for word in TAMPERINGS[tampering].must_mention:
        assert word in message, f"{tampering}: error lacks {word!r}: {refused.value}"


@pytest.mark.parametrize("tampering", ["modified_weights_byte", "truncated_weights", "unknown_format_version"])
def test_load_model_refuses_tampered_checkpoint(tampering: str, trained_checkpoint: Path, tmp_path: Path) -> None:
    damaged = tampered_copy(trained_checkpoint, tmp_path / tampering, tampering)
    with pytest.raises(CheckpointError, match="model.pt|format_version"):
        load_model(damaged)


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_engine_refuses_tampered_checkpoint(tampering: str, trained_checkpoint: Path, tmp_path: Path) -> None:
    from hrm_platform.serving.engine import EngineError, InferenceEngine

    damaged = tampered_copy(trained_checkpoint, tmp_path / tampering, tampering)

    with pytest.raises(EngineError) as refused:
        InferenceEngine.from_checkpoint(damaged)

    message = str(refused.value).lower()
    for word in TAMPERINGS[tampering].must_mention:
        assert word in message, f"{tampering}: engine error lacks {word!r}: {refused.value}"


def test_state_dict_that_does_not_fit_the_manifest_model_is_refused(trained_checkpoint: Path, tmp_path: Path) -> None:
    """Hashes agree (a re-signed file), but the tensors do not fit the model the manifest describes."""
    import json

    import torch

    from hrm_platform.checkpoint import file_sha256

    damaged = tampered_copy(trained_checkpoint, tmp_path / "wrong_shape", "missing_weights")
    torch.save({"not_a_layer.weight": torch.zeros(3, 3)}, damaged / "model.pt")
    manifest = json.loads((damaged / MANIFEST_FILE).read_text())
    manifest["files"]["model.pt"] = file_sha256(damaged / "model.pt")
    manifest["model_version"] = manifest["files"]["model.pt"][:12]
    (damaged / MANIFEST_FILE).write_text(json.dumps(manifest))

    load_checkpoint(damaged)  # integrity holds: the file is what the manifest says
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(damaged)
