"""Nothing from a checkpoint is unpickled: a model.pt carrying code is refused and the code never runs.

The bomb's manifest hashes are rewritten to match, so integrity checking passes and only
`torch.load(weights_only=True)` stands between the file and code execution. A positive control first
proves the bomb is live: plain unpickling does run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hrm_platform.checkpoint import CheckpointError, load_checkpoint, load_manifest
from tests.reliability.tampering import copy_checkpoint, plant_pickle_bomb


@pytest.fixture
def bomb(trained_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = copy_checkpoint(trained_checkpoint, tmp_path / "bomb")
    marker = tmp_path / "code-ran.txt"
    plant_pickle_bomb(checkpoint, marker)
    return checkpoint, marker


def test_the_bomb_is_live_when_unpickled_unsafely(bomb: tuple[Path, Path]) -> None:
    checkpoint, marker = bomb
    torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=False)
    assert marker.read_text() == "code ran while unpickling"


def test_load_checkpoint_refuses_pickled_code_and_never_runs_it(bomb: tuple[Path, Path]) -> None:
    checkpoint, marker = bomb
    load_manifest(checkpoint)  # the hashes agree: integrity alone would let this file through

    with pytest.raises(CheckpointError, match=r"model\.pt.*weights_only=True"):
        load_checkpoint(checkpoint)

    assert not marker.exists(), "loading a checkpoint executed code from model.pt"


def test_engine_refuses_pickled_code_and_never_runs_it(bomb: tuple[Path, Path]) -> None:
    from hrm_platform.serving.engine import EngineError, InferenceEngine

    checkpoint, marker = bomb
    with pytest.raises(EngineError, match=r"model\.pt"):
        InferenceEngine.from_checkpoint(checkpoint)
    assert not marker.exists(), "building a serving engine executed code from model.pt"
