"""Every model.arch exports: eager, jit_int8 and compiled each pass the agreement check, and the engine loads
the export's choice and answers as eager fp32 does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hrm_platform.checkpoint import load_manifest
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.engine import InferenceEngine
from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir
from tests.conftest import ARCH_SETTINGS


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_every_arch_exports_all_variants_within_tolerance(exported_arch_checkpoints, arch):
    checkpoint = exported_arch_checkpoints[arch]
    assert load_manifest(checkpoint)["config"]["model"]["arch"] == arch
    export = json.loads((serving_dir(checkpoint) / SERVING_MANIFEST).read_text())
    for name in ("eager", "jit_int8", "compiled"):
        figures = export["variants"][name]
        assert figures["status"] in ("chosen", "passed"), (name, figures["reason"])
        assert figures["agreement"] >= 0.99, (name, figures["agreement"])

    served = InferenceEngine.from_checkpoint(checkpoint)
    eager = InferenceEngine.from_checkpoint(checkpoint, variant="eager")
    assert served.variant == export["chosen"]
    frame = generate_market(1, 800, seed=11, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()
    requests = [frame[start : start + eager.bars_needed] for start in range(0, 600, 20)]
    chosen, reference = served.predict_bars(requests), eager.predict_bars(requests)
    agreement = np.mean([a.action == b.action for a, b in zip(chosen, reference)])
    assert agreement >= 0.99
