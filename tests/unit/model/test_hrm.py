"""HRM structure: shapes, detached carry, one-step gradient, parameter sharing, checkpointing, scriptability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hrm_platform.config import ModelConfig
from hrm_platform.model.hrm import HRM, HRMCarry, count_parameters
from hrm_platform.model.layers import Attention, RotaryEmbedding, TransformerBlock

N_FEATURES = 6
WINDOW = 12


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(d_model=32, n_heads=2, h_layers=1, l_layers=1, h_cycles=2, l_cycles=3, max_segments=3)
    fields.update(overrides)
    return ModelConfig(**fields)


def make_model(seed: int = 0, **overrides) -> HRM:
    torch.manual_seed(seed)
    return HRM(tiny_config(**overrides), n_features=N_FEATURES, window=WINDOW)


def make_windows(batch: int = 5, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, WINDOW, N_FEATURES, generator=generator)


def test_shapes_of_carry_embedding_segment_and_outputs():
    model = make_model()
    windows = make_windows(batch=5)
    carry = model.initial_carry(5)
    assert carry.z_H.shape == carry.z_L.shape == (5, WINDOW + 1, 32)
    x = model.embed(windows)
    assert x.shape == (5, WINDOW + 1, 32)
    z_H, z_L, logits, quantity, q_halt, q_continue = model.segment(carry.z_H, carry.z_L, x)
    assert z_H.shape == z_L.shape == (5, WINDOW + 1, 32)
    assert logits.shape == (5, 3) and quantity.shape == q_halt.shape == q_continue.shape == (5,)
    new_carry, outputs = model(carry, windows)
    assert isinstance(new_carry, HRMCarry)
    assert outputs.action_logits.shape == (5, 3)
    assert bool(((outputs.quantity >= 0) & (outputs.quantity <= 1)).all())
    # The Q head starts at equal, low logits: nothing halts before it has learned.
    assert torch.allclose(outputs.q_halt, torch.full((5,), -5.0))


def test_wrong_window_shape_is_rejected_with_the_expected_shape():
    model = make_model()
    with pytest.raises(ValueError, match=rf"expects \(B, {WINDOW}, {N_FEATURES}\)"):
        model.embed(torch.randn(2, WINDOW + 1, N_FEATURES))


def test_carry_has_no_autograd_history_and_segments_reach_new_states():
    model = make_model(h_cycles=1, l_cycles=1)
    windows = make_windows()
    carry = model.initial_carry(windows.shape[0])
    for _ in range(3):
        previous = carry
        carry, outputs = model(carry, windows)
        assert carry.z_H.grad_fn is None and carry.z_L.grad_fn is None
        assert not carry.z_H.requires_grad and not carry.z_L.requires_grad
        assert outputs.action_logits.grad_fn is not None  # the heads do carry this segment's graph
        assert not torch.allclose(carry.z_H, previous.z_H)


def _graph_nodes(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return len(seen)


def _segment_graph_sizes(model: HRM, n_segments: int) -> list[tuple[int, int]]:
    """(autograd nodes, bytes of saved tensors) of each segment's loss over n_segments."""
    windows = make_windows()
    carry = model.initial_carry(windows.shape[0])
    sizes = []
    for _ in range(n_segments):
        saved_bytes = 0

        def pack(tensor):
            nonlocal saved_bytes
            saved_bytes += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            carry, outputs = model(carry, windows)
        loss = outputs.action_logits.logsumexp(-1).sum() + outputs.q_halt.sum()
        sizes.append((_graph_nodes(loss), saved_bytes))
        loss.backward()
    return sizes


@pytest.mark.parametrize("cycles", [(1, 1), (2, 3)])
def test_memory_held_for_backward_does_not_grow_with_segments(cycles):
    # With one cycle each the carry feeds the graph-recording updates directly: only the detach cuts it.
    model = make_model(h_cycles=cycles[0], l_cycles=cycles[1])
    two = _segment_graph_sizes(model, 2)
    eight = _segment_graph_sizes(model, 8)
    # Segment 8's graph and saved activations are exactly as big as segment 1's: nothing accumulates.
    assert len({size for size in two + eight}) == 1
    assert eight[-1][1] > 0


class _CallCounter:
    def __init__(self, module: nn.Module) -> None:
        self.forward_calls = 0
        self.grad_forward_calls = 0
        self.backward_calls = 0
        module.register_forward_hook(self._on_forward)
        module.register_full_backward_hook(self._on_backward)

    def _on_forward(self, module, inputs, output):
        self.forward_calls += 1
        self.grad_forward_calls += int(output.requires_grad)

    def _on_backward(self, module, grad_input, grad_output):
        self.backward_calls += 1


def test_only_the_last_L_and_last_H_updates_receive_gradients():
    model = make_model(h_cycles=2, l_cycles=3)
    l_block = _CallCounter(model.L_level.blocks[0])
    h_block = _CallCounter(model.H_level.blocks[0])
    windows = make_windows()
    carry, outputs = model(model.initial_carry(windows.shape[0]), windows)
    (outputs.action_logits.sum() + outputs.quantity.sum()).backward()
    assert (l_block.forward_calls, h_block.forward_calls) == (6, 2)  # h_cycles * l_cycles and h_cycles
    assert (l_block.grad_forward_calls, h_block.grad_forward_calls) == (1, 1)
    assert (l_block.backward_calls, h_block.backward_calls) == (1, 1)


def segment_input_grad(model: HRM, windows: torch.Tensor) -> tuple[torch.Tensor, HRMCarry]:
    """The input projection's gradient of sum(action_logits^2) after one segment, and the carry it started
    from; the model's gradients are zeroed again for a computation by hand."""
    carry = model.initial_carry(windows.shape[0])
    _, outputs = model(carry, windows)
    outputs.action_logits.pow(2).sum().backward()
    expected = model.input_proj.weight.grad.clone()
    model.zero_grad()
    return expected, carry


def test_one_step_gradient_equals_a_manual_computation():
    model = make_model(h_cycles=2, l_cycles=2)
    windows = make_windows()
    expected, carry = segment_input_grad(model, windows)

    # By hand: three updates without a graph, then L and H with one.
    x = model.embed(windows)
    cos, sin = model.rotary(WINDOW + 1)
    with torch.no_grad():
        z_L = model.L_level(carry.z_L, carry.z_H + x, cos, sin)
        z_L = model.L_level(z_L, carry.z_H + x, cos, sin)
        z_H = model.H_level(carry.z_H, z_L, cos, sin)
        z_L = model.L_level(z_L, z_H + x, cos, sin)
    z_L = model.L_level(z_L, z_H + x, cos, sin)
    z_H = model.H_level(z_H, z_L, cos, sin)
    model.heads.action(z_H[:, 0]).pow(2).sum().backward()
    torch.testing.assert_close(model.input_proj.weight.grad, expected)


def test_parameter_sharing_shares_storage_and_counts_once():
    separate = make_model(share_parameters=False)
    shared = make_model(share_parameters=True)
    shared_block, other_block = shared.H_level.blocks[0], shared.L_level.blocks[0]
    assert shared_block.attention.qkv.weight.data_ptr() == other_block.attention.qkv.weight.data_ptr()
    assert shared_block.mlp.down.weight is other_block.mlp.down.weight
    stack_size = sum(parameter.numel() for parameter in separate.H_level.parameters())
    assert count_parameters(shared) == count_parameters(separate) - stack_size
    # Both levels' updates accumulate into the one tensor.
    windows = make_windows()
    _, outputs = shared(shared.initial_carry(windows.shape[0]), windows)
    outputs.action_logits.sum().backward()
    assert shared_block.attention.qkv.weight.grad is other_block.attention.qkv.weight.grad
    assert float(shared_block.attention.qkv.weight.grad.abs().sum()) > 0


def test_shared_model_round_trips_through_state_dict():
    shared = make_model(share_parameters=True)
    restored = make_model(seed=5, share_parameters=True)
    restored.load_state_dict(shared.state_dict())
    windows = make_windows()
    _, expected = shared(shared.initial_carry(5), windows)
    _, actual = restored(restored.initial_carry(5), windows)
    torch.testing.assert_close(actual.action_logits, expected.action_logits)
    assert restored.H_level.blocks[0].mlp.down.weight is restored.L_level.blocks[0].mlp.down.weight


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = make_model(seed=3, gradient_checkpointing=False)
    checkpointed = make_model(seed=3, gradient_checkpointing=True)
    windows = make_windows()
    for model in (plain, checkpointed):
        carry, outputs = model(model.initial_carry(5), windows)
        _, outputs = model(carry, windows)  # second segment, from a carried state
        (outputs.action_logits.logsumexp(-1).sum() + outputs.quantity.sum() + outputs.q_continue.sum()).backward()
    for (name, expected), (_, actual) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert actual.grad is not None, name
        torch.testing.assert_close(actual.grad, expected.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated in torch 2.13
def test_attention_block_is_scriptable_and_matches_eager():
    torch.manual_seed(0)
    block = TransformerBlock(d_model=32, n_heads=4, ff_mult=2.0)
    rotary = RotaryEmbedding(head_dim=8, max_positions=10)
    cos, sin = rotary(10)
    hidden = torch.randn(2, 10, 32)
    scripted = torch.jit.script(block)
    torch.testing.assert_close(scripted(hidden, cos, sin), block(hidden, cos, sin))
    assert isinstance(torch.jit.script(Attention(32, 4)), torch.jit.ScriptModule)


def test_rotary_attention_depends_on_relative_position_only():
    torch.manual_seed(0)
    attention = Attention(d_model=16, n_heads=2)
    rotary = RotaryEmbedding(head_dim=8, max_positions=20)
    hidden = torch.randn(1, 6, 16)
    cos, sin = rotary(20)
    # Shifting every token by the same offset leaves attention unchanged (no absolute positions anywhere).
    at_start = attention(hidden, cos[:6], sin[:6])
    shifted = attention(hidden, cos[7:13], sin[7:13])
    torch.testing.assert_close(at_start, shifted, rtol=1e-4, atol=1e-5)
