"""The cuda_graph engine's ACT loop, run eagerly on CPU (capture=False): buckets, padding, chunking and the
on-device halting give exactly what `act_inference` gives. The captured graphs run in tests/gpu."""

from __future__ import annotations

import pytest
import torch

from hrm_platform.config import load_config
from hrm_platform.model.act import act_inference
from hrm_platform.serving.cuda_graph import CudaGraphAct, bucket_chunks, bucket_for, padded_limits
from hrm_platform.training.state import build_model

N_FEATURES = 11


def test_bucket_is_the_smallest_that_fits_else_the_largest():
    buckets = (1, 8, 32)
    assert [bucket_for(n, buckets) for n in (1, 2, 8, 9, 32, 33)] == [1, 8, 8, 32, 32, 32]


def test_chunks_cover_the_batch_with_full_largest_buckets_then_one_padded():
    assert bucket_chunks(70, (1, 8, 32)) == [(0, 32, 32), (32, 64, 32), (64, 70, 8)]
    assert bucket_chunks(1, (1, 8, 32)) == [(0, 1, 1)]


def test_padding_rows_stop_after_one_segment():
    assert padded_limits(torch.tensor([3, 2]), 4).tolist() == [3, 2, 1, 1]


@pytest.fixture
def model_with_varied_halting():
    config = load_config("jobs/configs/smoke.yaml")
    model = build_model(config, N_FEATURES).eval()
    with torch.no_grad():  # an untrained Q head never halts; give it opinions that differ per window
        model.heads.q_values.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
        model.heads.q_values.bias.copy_(torch.tensor([-0.3, 0.3]))
    return model


@pytest.mark.parametrize("use_halting", [True, False])
def test_masked_loop_equals_act_inference(model_with_varied_halting, use_halting):
    model = model_with_varied_halting
    max_segments = model.config.max_segments
    runner = CudaGraphAct(model, model.segment, buckets=(1, 4, 8), max_segments=max_segments, capture=False)
    generator = torch.Generator().manual_seed(0)
    windows = torch.randn(19, model.window, N_FEATURES, generator=generator)  # chunks of 8, 8 and 3 padded to 4
    budgets = torch.randint(1, max_segments + 1, (19,), generator=generator)
    with torch.no_grad():
        expected = act_inference(
            model.segment, model.embed(windows), model.initial_carry(19), budgets, max_segments, use_halting
        )
    got = runner(windows, budgets, use_halting)
    assert len(set(expected.segments_used.tolist())) > 1  # the test exercises mixed halting
    assert torch.equal(got.segments_used, expected.segments_used)
    for name in ("probabilities", "quantity", "q_halt", "confidence"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-6)


def test_a_second_call_does_not_see_the_first(model_with_varied_halting):
    """Static buffers are reset per call: the same window alone gives the same answer as in a batch."""
    model = model_with_varied_halting
    runner = CudaGraphAct(model, model.segment, buckets=(1, 8), max_segments=model.config.max_segments, capture=False)
    windows = torch.randn(8, model.window, N_FEATURES, generator=torch.Generator().manual_seed(1))
    batch = runner(windows, None)
    alone = runner(windows[5:6], None)
    assert torch.equal(alone.segments_used, batch.segments_used[5:6])
    torch.testing.assert_close(alone.probabilities, batch.probabilities[5:6], rtol=0, atol=1e-6)


def test_capture_needs_cuda(model_with_varied_halting):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        CudaGraphAct(model_with_varied_halting, model_with_varied_halting.segment, (1,), 3)
