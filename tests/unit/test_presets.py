"""Every shipped preset validates, so a typo in one fails here and not on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrm_platform.config import load_config

PRESETS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def test_presets_exist() -> None:
    assert {path.stem for path in PRESETS} >= {"smoke", "gpu"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_validates(preset: Path) -> None:
    config = load_config(preset)
    assert config.serve.host == "127.0.0.1"


def test_gpu_preset_uses_gpus_and_bf16() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "gpu.yaml")
    assert config.train.use_gpu and config.train.num_workers > 1
    assert config.train.precision == "bf16" and config.serve.engine_variant == "bf16"
