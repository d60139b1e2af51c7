"""model.arch (hrm, trm, transformer), model.gradient (one_step, last_cycle) and model.halting (bce) behind the
one segment contract."""

from __future__ import annotations

import pytest
import torch

from hrm_platform.config import ConfigError, load_config
from hrm_platform.model.act import deep_supervision_step, predict
from hrm_platform.model.flops import blocks_per_segment, recorded_blocks_per_segment
from hrm_platform.model.hrm import count_parameters
from tests.unit.model.test_hrm import WINDOW, make_model, make_windows, segment_input_grad


class _Recorder:
    """Every output of a module's forward, kept with its gradient after backward."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        module.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        if output.requires_grad:
            output.retain_grad()
        self.outputs.append(output)

    def reached_by_gradient(self) -> list[bool]:
        return [output.grad is not None and bool(output.grad.abs().sum() > 0) for output in self.outputs]


def test_trm_runs_one_shared_stack_with_one_set_of_parameters():
    hrm = make_model(arch="hrm")
    trm = make_model(arch="trm")
    assert trm.H_level is trm.L_level
    assert hrm.H_level is not hrm.L_level
    stack = sum(parameter.numel() for parameter in hrm.H_level.parameters())
    assert count_parameters(trm) == count_parameters(hrm) - stack
    names = [name for name, _ in trm.named_parameters()]
    assert not any(name.startswith("H_level.") for name in names)  # registered twice, listed once


def test_trm_refuses_unequal_stack_depths_naming_the_keys():
    with pytest.raises(ConfigError, match="model.h_layers must equal model.l_layers"):
        load_config(None, ["model.arch=trm", "model.h_layers=2", "model.l_layers=1"])


def test_last_cycle_gradients_reach_the_whole_last_cycle_and_no_earlier_one():
    model = make_model(arch="trm", gradient="last_cycle", h_cycles=2, l_cycles=3)
    low = _Recorder(model.L_level)  # the shared stack: L and H applications in call order
    windows = make_windows()
    _, outputs = model(model.initial_carry(windows.shape[0]), windows)
    outputs.action_logits.pow(2).sum().backward()
    # Call order: L L L H | L L L H. The first cycle ran under no_grad; the last cycle is recorded whole,
    # its first L update included.
    assert [output.requires_grad for output in low.outputs] == [False] * 4 + [True] * 4
    assert low.reached_by_gradient() == [False] * 4 + [True] * 4


def test_one_step_records_only_the_last_L_and_H_updates():
    model = make_model(arch="trm", gradient="one_step", h_cycles=2, l_cycles=3)
    low = _Recorder(model.L_level)
    windows = make_windows()
    _, outputs = model(model.initial_carry(windows.shape[0]), windows)
    outputs.action_logits.pow(2).sum().backward()
    assert low.reached_by_gradient() == [False] * 6 + [True] * 2


def test_last_cycle_gradient_equals_a_manual_computation():
    model = make_model(gradient="last_cycle", h_cycles=2, l_cycles=2)
    windows = make_windows()
    expected, carry = segment_input_grad(model, windows)

    x = model.embed(windows)
    cos, sin = model.rotary(WINDOW + 1)
    with torch.no_grad():  # the first H cycle
        z_L = model.L_level(carry.z_L, carry.z_H + x, cos, sin)
        z_L = model.L_level(z_L, carry.z_H + x, cos, sin)
        z_H = model.H_level(carry.z_H, z_L, cos, sin)
    z_L = model.L_level(z_L, z_H + x, cos, sin)  # the last H cycle, recorded whole
    z_L = model.L_level(z_L, z_H + x, cos, sin)
    z_H = model.H_level(z_H, z_L, cos, sin)
    model.heads.action(z_H[:, 0]).pow(2).sum().backward()
    torch.testing.assert_close(model.input_proj.weight.grad, expected)


def test_one_step_is_the_default_and_unchanged_by_the_new_settings():
    default = make_model(seed=4)
    explicit = make_model(seed=4, arch="hrm", gradient="one_step", halting="q_learning")
    windows = make_windows()
    _, expected = default(default.initial_carry(5), windows)
    _, actual = explicit(explicit.initial_carry(5), windows)
    assert torch.equal(actual.action_logits, expected.action_logits)
    assert torch.equal(actual.q_continue, expected.q_continue)


def test_transformer_reads_x_once_per_segment_and_no_carry():
    model = make_model(arch="transformer", h_layers=1, l_layers=2, h_cycles=2, l_cycles=3)
    assert len(model.L_level.blocks) == 3 and model.H_level is model.L_level
    windows = make_windows()
    x = model.embed(windows)
    carry = model.initial_carry(windows.shape[0])
    first = model.segment(carry.z_H, carry.z_L, x)
    other = model.segment(torch.randn_like(carry.z_H), torch.randn_like(carry.z_L), x)
    torch.testing.assert_close(first[2], other[2])  # same logits whatever the carry
    stack = _Recorder(model.L_level.blocks[0])
    _, outputs = model(carry, windows)
    outputs.action_logits.sum().backward()
    assert stack.reached_by_gradient() == [True]  # the one pass, fully differentiated
    assert model.input_proj.weight.grad is not None


def test_flops_follow_the_arch_and_the_gradient():
    one_step = make_model(h_cycles=2, l_cycles=3).config
    last_cycle = make_model(h_cycles=2, l_cycles=3, gradient="last_cycle").config
    transformer = make_model(arch="transformer", h_cycles=2, l_cycles=3).config
    assert blocks_per_segment(one_step) == blocks_per_segment(last_cycle) == 2 * 3 * 1 + 2 * 1
    assert (recorded_blocks_per_segment(one_step), recorded_blocks_per_segment(last_cycle)) == (2, 4)
    assert blocks_per_segment(transformer) == recorded_blocks_per_segment(transformer) == 2


def _q_continue_row_grad(halting: str) -> float:
    """|grad| of the Q head's q_continue row after one deep-supervision batch (SGD with lr 0: nothing moves)."""
    model = make_model(seed=2, halting=halting, max_segments=3)
    with torch.no_grad():  # unequal Q logits: at the initial equal ones q_continue's target equals its value
        model.heads.q_values.bias.copy_(torch.tensor([1.0, -1.0]))
    grads: list[float] = []

    def keep_grad() -> None:
        grads.append(float(model.heads.q_values.weight.grad[1].abs().sum() + model.heads.q_values.bias.grad[1].abs()))

    windows = make_windows(batch=16)
    actions = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0))
    deep_supervision_step(
        model, windows, actions, torch.rand(16), torch.optim.SGD(model.parameters(), lr=0.0),
        max_segments=3, halt_exploration=1.0, quantity_loss_weight=1.0, q_loss_weight=0.5,
        before_optimizer_step=keep_grad,
    )
    return sum(grads)


def test_bce_halting_trains_no_q_continue_and_halts_on_q_halt_alone():
    assert _q_continue_row_grad("q_learning") > 0
    assert _q_continue_row_grad("bce") == 0.0
    model = make_model(halting="bce", max_segments=3)
    with torch.no_grad():
        model.heads.q_values.bias.copy_(torch.tensor([2.0, 50.0]))  # P(right) > 0.5; q_continue's logit is ignored
    result = predict(model, make_windows())
    assert result.segments_used.tolist() == [1] * 5
