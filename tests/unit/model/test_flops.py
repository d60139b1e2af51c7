"""The model-FLOPs formula: a hand count for a tiny config, and torch's own FLOP counter on real steps."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hrm_platform.config import ModelConfig, load_config
from hrm_platform.model.act import deep_supervision_step, predict
from hrm_platform.model.flops import (
    block_flops,
    inference_flops_per_sample,
    training_flops_per_sample_segment,
)
from hrm_platform.training.state import build_model, new_training_run
from hrm_platform.training.throughput import throughput_figures

TINY = ModelConfig(d_model=8, n_heads=2, ff_mult=2.0, h_layers=1, l_layers=1, h_cycles=1, l_cycles=2, max_segments=2)


def test_tiny_config_matches_a_hand_count():
    # d=8, SwiGLU width 16, window 3 -> 4 tokens, 2 features.
    # block per token: qkv 2*8*24=384, out 2*8*8=128, gate_up 2*8*32=512, down 2*16*8=256 -> 1280; x 4 tokens
    # = 5120; attention 2 * (2*4*4*8) = 512 -> 5632.
    assert block_flops(TINY, n_tokens=4) == 5632
    # forward: embed 2*3*2*8=96, 3 blocks (L twice, H once), heads 2*8*6=96 -> 96 + 16896 + 96 = 17088
    # backward: 2 x (last L + last H + heads) = 2 x 11360 = 22720, + the input projection's weight grad 96
    assert training_flops_per_sample_segment(TINY, window=3, n_features=2) == 17088 + 22816
    # inference, 2 segments: one embedding + 2 x (3 blocks + heads)
    assert inference_flops_per_sample(TINY, window=3, n_features=2, segments=2) == 96 + 2 * (3 * 5632 + 96)


@pytest.fixture
def smoke():
    return load_config("jobs/configs/smoke.yaml")


def test_formula_equals_torch_flop_counter_on_a_training_segment(smoke):
    """One deep-supervision segment (forward + backward) counted by torch.utils.flop_counter; the math SDPA
    kernel shows the attention products as matmuls (the fused CPU kernel is not counted by torch)."""
    model = build_model(smoke, n_features=11)
    run = new_training_run(model, smoke, torch.device("cpu"), steps_per_epoch=10)
    batch = 4
    windows = torch.randn(batch, smoke.data.window, 11)
    actions, quantities = torch.randint(0, 3, (batch,)), torch.rand(batch)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        deep_supervision_step(
            run.step_model, windows, actions, quantities, run.optimizer, max_segments=1, halt_exploration=0.0,
            quantity_loss_weight=1.0, q_loss_weight=0.5, grad_clip=1.0,
        )
    expected = batch * training_flops_per_sample_segment(smoke.model, smoke.data.window, 11)
    assert counter.get_total_flops() == expected


def test_formula_equals_torch_flop_counter_on_inference(smoke):
    model = build_model(smoke, n_features=11).eval()
    windows = torch.randn(5, smoke.data.window, 11)
    segments = smoke.model.max_segments
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        predict(model, windows, use_halting=False)
    assert counter.get_total_flops() == 5 * inference_flops_per_sample(smoke.model, smoke.data.window, 11, segments)


def test_throughput_figures_give_mfu_only_with_a_peak():
    cpu = throughput_figures(2e12, 2.0, torch.device("cpu"), world_size=1)
    assert cpu == {"achieved_tflops": 1.0, "mfu": None, "peak_tflops_per_device": None}
    # Two ranks together reached 100 TFLOP/s on devices of 200 TFLOP/s peak each: 25 %.
    both = throughput_figures(1e15, 10.0, torch.device("cpu"), world_size=2, peak_override=200.0)
    assert both["achieved_tflops"] == pytest.approx(100.0)
    assert both["mfu"] == pytest.approx(0.25)
