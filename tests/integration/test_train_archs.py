"""trm and transformer under Ray Train DDP (2 CPU workers): both ranks end every epoch with bit-identical weights,
and with model.ema_decay the averaged weights are identical across ranks too."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import load_config
from hrm_platform.training.trainer import run_training

pytestmark = pytest.mark.ray

SMOKE_PRESET = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "smoke.yaml"
ARCH_RUNS = {
    "trm": ["model.arch=trm", "model.gradient=last_cycle", "model.halting=bce", "train.ema_decay=0.9"],
    "transformer": ["model.arch=transformer"],
}


@pytest.mark.parametrize("arch", sorted(ARCH_RUNS))
def test_arch_trains_under_ddp_with_identical_ranks(ray_cluster, tmp_path, arch):
    config = load_config(SMOKE_PRESET, [
        *ARCH_RUNS[arch], f"train.storage_path={tmp_path}", f"train.name=ddp-{arch}", "train.epochs=2",
        "train.max_train_batches=6",
    ])
    summary = run_training(config, quiet=True)
    assert summary.epochs_completed == 2
    for entry in summary.history:
        assert entry["world_size"] == 2
        ranks = entry["param_fingerprints"]
        assert len(ranks) == 2 and ranks[0] == ranks[1], entry["epoch"]
        if config.train.ema_decay is not None:
            averaged = entry["ema_fingerprints"]
            assert len(averaged) == 2 and averaged[0] == averaged[1] and averaged[0] != ranks[0]
    assert summary.history[0]["param_fingerprints"][0] != summary.history[1]["param_fingerprints"][0]
    manifest = load_manifest(summary.checkpoint_path)  # verifies every hash
    assert manifest["config"]["model"]["arch"] == arch
    assert ("ema.pt" in manifest["files"]) == (config.train.ema_decay is not None)
