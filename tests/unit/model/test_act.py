"""ACT: inference halting and budgets, and the deep-supervision step (masking, DDP early-exit rule, precision)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hrm_platform.config import ModelConfig
from hrm_platform.model.act import (
    act_inference,
    deep_supervision_step,
    exploration_min_segments,
    outputs_per_segment,
    predict,
)
from hrm_platform.model.hrm import HRM, HRMCarry

N_FEATURES = 6
WINDOW = 12
BATCH = 16


def make_model(seed: int = 0, **overrides) -> HRM:
    fields = dict(d_model=32, n_heads=2, h_layers=1, l_layers=1, h_cycles=1, l_cycles=2, max_segments=4)
    fields.update(overrides)
    torch.manual_seed(seed)
    return HRM(ModelConfig(**fields), n_features=N_FEATURES, window=WINDOW)


def make_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randn(BATCH, WINDOW, N_FEATURES, generator=generator)
    actions = torch.randint(0, 3, (BATCH,), generator=generator)
    quantities = torch.rand(BATCH, generator=generator)
    return windows, actions, quantities


def step_kwargs(**overrides) -> dict:
    kwargs = dict(max_segments=4, halt_exploration=0.0, quantity_loss_weight=1.0, q_loss_weight=0.5, grad_clip=1.0)
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------ inference


def counting_segment_fn(halt_at: torch.Tensor):
    """A stand-in segment: z_H counts segments; sample i wants to halt from segment halt_at[i] on.

    The action logits point at class (segment % 3), so a frozen output reveals the segment it came from.
    """

    def segment_fn(z_H, z_L, x):
        z_H = z_H + 1
        segment = z_H[:, 0, 0].long()  # (B,)
        logits = torch.nn.functional.one_hot(segment % 3, 3).float() * 10
        q_halt = torch.where(segment >= halt_at, 1.0, -1.0)
        return z_H, z_L, logits, segment.float() / 10, q_halt, torch.zeros_like(q_halt)

    return segment_fn


def zero_carry(batch: int) -> tuple[torch.Tensor, HRMCarry]:
    zeros = torch.zeros(batch, 3, 4)
    return zeros, HRMCarry(zeros.clone(), zeros.clone())


def test_inference_stops_each_sample_at_its_halt_or_its_budget_and_freezes_its_outputs():
    halt_at = torch.tensor([1, 2, 5, 9, 9])
    budgets = torch.tensor([6, 6, 6, 3, 6])
    x, carry = zero_carry(5)
    result = act_inference(counting_segment_fn(halt_at), x, carry, budgets, max_segments=6)
    expected_segments = torch.tensor([1, 2, 5, 3, 6])
    assert torch.equal(result.segments_used, expected_segments)
    assert torch.equal(result.probabilities.argmax(-1), expected_segments % 3)
    torch.testing.assert_close(result.quantity, expected_segments.float() / 10)
    torch.testing.assert_close(result.confidence, result.probabilities.max(-1).values)


def test_inference_without_halting_runs_every_sample_to_its_budget():
    halt_at = torch.ones(4, dtype=torch.int64)
    x, carry = zero_carry(4)
    budgets = torch.tensor([1, 2, 3, 99])  # clamped to max_segments
    result = act_inference(counting_segment_fn(halt_at), x, carry, budgets, max_segments=4, use_halting=False)
    assert result.segments_used.tolist() == [1, 2, 3, 4]


def test_inference_stops_calling_segments_once_everyone_halted():
    calls = []
    inner = counting_segment_fn(torch.tensor([2, 2, 2]))

    def segment_fn(z_H, z_L, x):
        calls.append(1)
        return inner(z_H, z_L, x)

    x, carry = zero_carry(3)
    act_inference(segment_fn, x, carry, None, max_segments=8)
    assert len(calls) == 2


def test_predict_respects_budgets_on_a_real_model():
    model = make_model().eval()
    windows, _, _ = make_batch()
    budgets = torch.arange(BATCH) % 4 + 1  # 1..4
    result = predict(model, windows, budgets=budgets, use_halting=False)
    assert torch.equal(result.segments_used, budgets)
    torch.testing.assert_close(result.probabilities.sum(-1), torch.ones(BATCH))
    # A budget-k sample gets exactly the k-th segment's answer.
    per_segment = outputs_per_segment(model, windows, 4)
    for k in range(1, 5):
        chosen = budgets == k
        expected = torch.softmax(per_segment[k - 1].action_logits[chosen], -1)
        torch.testing.assert_close(result.probabilities[chosen], expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.ao quantization and torch.jit, torch 2.13
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_inference_runs_an_int8_and_a_traced_segment_function():
    model = make_model().eval()
    windows, _, _ = make_batch()
    eager = predict(model, windows, use_halting=False)
    x = model.embed(windows).detach()
    carry = model.initial_carry(BATCH)
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    int8 = act_inference(quantized.segment, x, carry, None, 4, use_halting=False)
    assert (int8.probabilities - eager.probabilities).abs().max() < 0.05
    assert quantized.L_level.blocks[0].attention.qkv.weight().dtype == torch.qint8
    with torch.no_grad():
        traced = torch.jit.trace_module(model, {"segment": (carry.z_H, carry.z_L, x)}, check_trace=False)
    jit = act_inference(traced.segment, x, carry, None, 4, use_halting=False)
    torch.testing.assert_close(jit.probabilities, eager.probabilities, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------- deep supervision


def force_halting(model: HRM, halt: bool) -> None:
    """Make the Q head say 'halt' (or 'continue') for every input, whatever it has learned."""
    with torch.no_grad():
        model.heads.q_values.weight.zero_()
        model.heads.q_values.bias.copy_(torch.tensor([5.0, -5.0] if halt else [-5.0, 5.0]))
        model.heads.q_values.weight.requires_grad_(False)
        model.heads.q_values.bias.requires_grad_(False)


def test_step_returns_per_segment_metrics_and_trains():
    model = make_model()
    force_halting(model, halt=False)
    windows, actions, quantities = make_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = deep_supervision_step(model, windows, actions, quantities, optimizer, **step_kwargs(q_loss_weight=0.0))
    assert first.segments_run == 4 and first.segments_used == 4.0
    assert len(first.accuracy) == len(first.active_fraction) == len(first.grad_norm) == 4
    assert all(0.0 <= value <= 1.0 for value in first.accuracy)
    for _ in range(15):  # the frozen Q head's loss is constant noise here: leave it out
        last = deep_supervision_step(model, windows, actions, quantities, optimizer, **step_kwargs(q_loss_weight=0.0))
    assert last.loss[-1] < 0.5 * first.loss[0]  # it fits one batch
    assert last.accuracy[-1] > 0.8


def test_halted_samples_stop_contributing_and_early_exit_needs_every_rank():
    model = make_model()
    force_halting(model, halt=True)
    windows, actions, quantities = make_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    flags = []

    def other_rank_still_running(local_all_halted: bool) -> bool:
        flags.append(local_all_halted)
        return False

    metrics = deep_supervision_step(
        model, windows, actions, quantities, optimizer, **step_kwargs(all_ranks_halted=other_rank_still_running)
    )
    assert metrics.segments_run == 4  # this rank halted at once but keeps step with the others
    assert flags == [True, True, True]  # asked after every segment but the last
    assert metrics.segments_used == 1.0
    # Segment 2 still carries segment 1's q_continue loss (its target is segment 2's value); then nothing.
    assert metrics.loss[0] > 0 and metrics.loss[1] > 0 and metrics.loss[2:] == [0.0, 0.0]
    assert metrics.active_fraction == [1.0, 0.0, 0.0, 0.0]

    alone = deep_supervision_step(model, windows, actions, quantities, optimizer, **step_kwargs())
    assert alone.segments_run == 1


def test_exploration_forces_a_minimum_of_two_to_M_segments():
    torch.manual_seed(0)
    assert torch.equal(exploration_min_segments(100, 4, 0.0, "cpu"), torch.ones(100, dtype=torch.int64))
    forced = exploration_min_segments(1000, 4, 1.0, "cpu")
    assert set(forced.tolist()) == {2, 3, 4}
    some = exploration_min_segments(4000, 4, 0.25, "cpu")
    assert 0.2 < float((some > 1).float().mean()) < 0.3
    assert torch.equal(exploration_min_segments(10, 1, 1.0, "cpu"), torch.ones(10, dtype=torch.int64))

    model = make_model()
    force_halting(model, halt=True)
    windows, actions, quantities = make_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    metrics = deep_supervision_step(model, windows, actions, quantities, optimizer, **step_kwargs(halt_exploration=1.0))
    assert metrics.active_fraction[1] == 1.0  # nobody may halt after segment 1
    assert 2.0 <= metrics.segments_used <= 4.0


def test_bf16_autocast_with_shared_checkpointed_blocks():
    model = make_model(share_parameters=True, gradient_checkpointing=True)
    windows, actions, quantities = make_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.L_level.blocks[0].attention.qkv.weight.detach().clone()
    hook_calls = []
    metrics = deep_supervision_step(
        model, windows, actions, quantities, optimizer,
        **step_kwargs(autocast_dtype=torch.bfloat16, before_optimizer_step=lambda: hook_calls.append(1)),
    )
    assert all(torch.isfinite(torch.tensor(metrics.loss)))
    assert len(hook_calls) == metrics.segments_run
    assert not torch.equal(before, model.L_level.blocks[0].attention.qkv.weight)


def test_grad_scaler_path_unscales_before_clipping():
    model = make_model()
    windows, actions, quantities = make_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    metrics = deep_supervision_step(model, windows, actions, quantities, optimizer, **step_kwargs(scaler=scaler))
    # Clipping saw true (unscaled) gradients: norms of order 1, not ~1024.
    assert all(0 < norm < 100 for norm in metrics.grad_norm)


def test_step_runs_through_a_ddp_wrapper(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = make_model()
        ddp = DistributedDataParallel(model)
        windows, actions, quantities = make_batch()
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)

        def all_ranks_halted(local_all_halted: bool) -> bool:
            flag = torch.tensor([int(local_all_halted)])
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            return bool(flag.item())

        before = model.input_proj.weight.detach().clone()
        metrics = deep_supervision_step(
            ddp, windows, actions, quantities, optimizer, **step_kwargs(all_ranks_halted=all_ranks_halted)
        )
        assert metrics.segments_run >= 1
        assert not torch.equal(before, model.input_proj.weight)
    finally:
        dist.destroy_process_group()


def test_q_continue_target_is_the_value_of_the_next_segment():
    from hrm_platform.model.act import continue_value
    from hrm_platform.model.hrm import HRMOutputs

    next_outputs = HRMOutputs(
        action_logits=torch.zeros(3, 3), quantity=torch.zeros(3),
        q_halt=torch.tensor([2.0, -1.0, 0.0]), q_continue=torch.tensor([0.0, 1.0, -3.0]),
    )
    # Not last: the better of halting or continuing there. Last: only halting is possible.
    expected = torch.sigmoid(torch.tensor([2.0, 1.0, 0.0]))
    torch.testing.assert_close(continue_value(next_outputs, next_is_last=False), expected)
    torch.testing.assert_close(continue_value(next_outputs, next_is_last=True), torch.sigmoid(next_outputs.q_halt))


def test_a_bf16_copy_of_the_model_runs_act_inference_and_agrees_with_fp32():
    import copy

    model = make_model().eval()
    windows, _, _ = make_batch()
    reference = predict(model, windows, use_halting=False)
    half = copy.deepcopy(model).to(torch.bfloat16)  # what a half-precision serving variant holds
    result = predict(half, windows.to(torch.bfloat16), use_halting=False)
    assert result.probabilities.dtype == torch.float32
    assert (result.probabilities - reference.probabilities).abs().max() < 0.05
