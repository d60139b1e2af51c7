"""Hierarchical Reasoning Model over a window of market bars, and its two ablations (`model.arch`).

Tokens are the W bars of a window (projected to d_model) plus one learned summary token at position 0; the
heads read the summary token of the slow state z_H.

One segment (`HRM.segment`) of the recurrent archs (hrm, trm) runs h_cycles x l_cycles updates:

    z_L <- L(z_L, z_H + x)            every update
    z_H <- H(z_H, z_L)                after every l_cycles L updates

    hrm           L and H are separate stacks (or one, with model.share_parameters)
    trm           L and H are one shared stack (TRM: the input reaches only the z_L update, as here)
    transformer   z_H <- stack(x), h_layers + l_layers blocks once per segment; the carry is not read

Gradient (`model.gradient`): one_step records only the last L and the last H update (the HRM paper's
one-step approximation; a segment's backward costs two module applications whatever the cycle counts);
last_cycle records the whole last H cycle (its l_cycles L updates and the H update: TRM's full
backpropagation through the final recursion); everything earlier runs under `torch.no_grad`.
`HRM.forward(carry, windows)` is one segment from a carry and returns the next carry detached; deep
supervision (`model/act.py`) calls it once per segment.

    model = HRM(ModelConfig(), n_features=bundle.train.n_features, window=64)
    carry = model.initial_carry(batch_size=8)
    carry, outputs = model(carry, windows)      # windows (8, 64, F)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hrm_platform.actions import N_ACTIONS
from hrm_platform.config import ModelConfig
from hrm_platform.model.layers import RotaryEmbedding, TransformerBlock

Q_HEAD_INIT_BIAS = -5.0  # both Q logits start low and equal: no halting until the Q head has learned


@dataclass
class HRMCarry:
    """Recurrent state between segments: z_H, z_L each (B, W+1, D)."""

    z_H: Tensor
    z_L: Tensor

    def detached(self) -> HRMCarry:
        """The one place where the carry is cut from the autograd graph."""
        return HRMCarry(self.z_H.detach(), self.z_L.detach())


@dataclass
class HRMOutputs:
    """One segment's heads, float32: action_logits (B, 3), quantity (B,) in [0, 1], q_halt (B,), q_continue (B,).

    summary (B, D): z_H's summary token, detached (what the heads read; deep supervision re-reads it to
    train q_continue once the next segment's Q values are known). None where a caller has no z_H.
    """

    action_logits: Tensor
    quantity: Tensor
    q_halt: Tensor
    q_continue: Tensor
    summary: Tensor | None = None


class ReasoningModule(nn.Module):
    """A stack of post-norm transformer blocks applied to `hidden + injection`."""

    def __init__(self, n_blocks: int, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(config.d_model, config.n_heads, config.ff_mult) for _ in range(n_blocks)
        )

    def forward(
        self, hidden: Tensor, injection: Tensor, cos: Tensor, sin: Tensor, checkpoint_blocks: bool = False
    ) -> Tensor:
        return self.run_blocks(hidden + injection, cos, sin, checkpoint_blocks)  # (B, T, D)

    def run_blocks(self, hidden: Tensor, cos: Tensor, sin: Tensor, checkpoint_blocks: bool = False) -> Tensor:
        for block in self.blocks:
            if checkpoint_blocks:
                # Recompute the block in backward instead of keeping its activations.
                hidden = checkpoint(block, hidden, cos, sin, use_reentrant=False)
            else:
                hidden = block(hidden, cos, sin)
        return hidden


class DecisionHeads(nn.Module):
    """Action logits, quantity and the two ACT Q logits from the summary token of z_H."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.action = nn.Linear(d_model, N_ACTIONS)
        self.quantity = nn.Linear(d_model, 1)
        self.q_values = nn.Linear(d_model, 2)  # (q_halt, q_continue)
        with torch.no_grad():
            self.q_values.weight.zero_()
            self.q_values.bias.fill_(Q_HEAD_INIT_BIAS)

    def forward(self, summary: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # summary (B, D) is in the model's own dtype (or autocast's), so fp32, half-precision and int8 copies all
        # run as they are; the outputs are fp32 for losses and halting comparisons.
        action_logits = self.action(summary).float()  # (B, 3)
        quantity = torch.sigmoid(self.quantity(summary).float()[:, 0])  # (B,)
        q_values = self.q_values(summary).float()  # (B, 2)
        return action_logits, quantity, q_values[:, 0], q_values[:, 1]

    def q_continue(self, summary: Tensor) -> Tensor:
        """(B,) the q_continue logit alone, from a (detached) summary (B, D) of a training model (nn.Linear)."""
        return self.q_values(summary.to(self.q_values.weight.dtype)).float()[:, 1]


class HRM(nn.Module):
    def __init__(self, config: ModelConfig, n_features: int, window: int) -> None:
        super().__init__()
        self.config = config
        self.n_features = n_features
        self.window = window
        d_model = config.d_model
        self.input_proj = nn.Linear(n_features, d_model)
        self.summary_token = nn.Parameter(torch.randn(1, 1, d_model))
        _init_unit_scale(self.input_proj)
        self.rotary = RotaryEmbedding(d_model // config.n_heads, window + 1, config.rope_base)
        self.L_level, self.H_level = _reasoning_stacks(config)
        self.heads = DecisionHeads(d_model)
        # Fixed (not learned) start states, saved with the weights so a loaded model starts identically.
        self.register_buffer("z_H_init", _truncated_normal(d_model))
        self.register_buffer("z_L_init", _truncated_normal(d_model))

    @property
    def n_tokens(self) -> int:
        return self.window + 1

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> HRMCarry:
        device = self.z_H_init.device if device is None else device
        shape = (batch_size, self.n_tokens, self.config.d_model)
        z_H = self.z_H_init.to(device).expand(shape).contiguous()  # (B, W+1, D)
        z_L = self.z_L_init.to(device).expand(shape).contiguous()  # (B, W+1, D)
        return HRMCarry(z_H, z_L)

    def embed(self, windows: Tensor) -> Tensor:
        """windows (B, W, F) normalised features -> x (B, W+1, D), summary token first."""
        if windows.shape[1] != self.window or windows.shape[2] != self.n_features:
            raise ValueError(
                f"windows of shape {tuple(windows.shape)} do not fit the model "
                f"(expects (B, {self.window}, {self.n_features}))"
            )
        bar_tokens = self.input_proj(windows)  # (B, W, D)
        summary = self.summary_token.to(bar_tokens.dtype).expand(windows.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat((summary, bar_tokens), dim=1)  # (B, W+1, D)

    def segment(self, z_H: Tensor, z_L: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One segment on plain tensors -> (z_H, z_L, action_logits, quantity, q_halt, q_continue).

        Not detached: `forward` detaches the carry; at inference the caller runs under no_grad. With
        model.halting='bce', q_continue is 0: a sample halts when sigmoid(q_halt) > 0.5.
        """
        cos, sin = self.rotary(x.shape[1])  # (T, hd) each
        record = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if self.config.arch == "transformer":
            z_H = self.L_level.run_blocks(x, cos, sin, record)  # (B, T, D); z_L passes through unread
        else:
            z_H, z_L = self._recurrent_updates(z_H, z_L, x, cos, sin, record)
        action_logits, quantity, q_halt, q_continue = self.heads(z_H[:, 0])
        if self.config.halting == "bce":
            q_continue = torch.zeros_like(q_halt)
        return z_H, z_L, action_logits, quantity, q_halt, q_continue

    def _recurrent_updates(
        self, z_H: Tensor, z_L: Tensor, x: Tensor, cos: Tensor, sin: Tensor, checkpoint_blocks: bool
    ) -> tuple[Tensor, Tensor]:
        """h_cycles x l_cycles updates; those before the recorded tail run under no_grad (model.gradient)."""
        l_cycles = self.config.l_cycles
        total_updates = self.config.h_cycles * l_cycles
        recorded_l_updates = l_cycles if self.config.gradient == "last_cycle" else 1
        with torch.no_grad():
            for update in range(1, total_updates - recorded_l_updates + 1):
                z_L = self.L_level(z_L, z_H + x, cos, sin)
                if update % l_cycles == 0:
                    z_H = self.H_level(z_H, z_L, cos, sin)
        for _ in range(recorded_l_updates):  # recorded for backward
            z_L = self.L_level(z_L, z_H + x, cos, sin, checkpoint_blocks)  # (B, T, D)
        z_H = self.H_level(z_H, z_L, cos, sin, checkpoint_blocks)  # (B, T, D)
        return z_H, z_L

    def forward(self, carry: HRMCarry, windows: Tensor) -> tuple[HRMCarry, HRMOutputs]:
        """One segment with the one-step gradient; the returned carry is detached."""
        x = self.embed(windows)  # (B, W+1, D)
        z_H, z_L, action_logits, quantity, q_halt, q_continue = self.segment(carry.z_H, carry.z_L, x)
        carry = HRMCarry(z_H, z_L).detached()
        return carry, HRMOutputs(action_logits, quantity, q_halt, q_continue, summary=carry.z_H[:, 0])


def _reasoning_stacks(config: ModelConfig) -> tuple[ReasoningModule, ReasoningModule]:
    """(L, H) stacks. A shared stack is registered twice: one set of Parameters, updated by both levels."""
    if config.arch == "transformer":
        stack = ReasoningModule(config.h_layers + config.l_layers, config)
        return stack, stack
    low = ReasoningModule(config.l_layers, config)
    if config.arch == "trm" or config.share_parameters:
        return low, low
    return low, ReasoningModule(config.h_layers, config)


def _init_unit_scale(projection: nn.Linear) -> None:
    """LeCun-normal weights: unit-variance features map to tokens of RMS ~1, the scale of the post-norm states.

    The injection z_H + x must not drown x: with torch's default init x would have RMS ~0.58 against states
    of RMS 1, and later segments (whose z_H varies per token) would see the bars through that noise.
    """
    std = projection.in_features**-0.5
    nn.init.trunc_normal_(projection.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(projection.bias)


def _truncated_normal(dim: int) -> Tensor:
    values = torch.empty(dim)
    nn.init.trunc_normal_(values, std=1.0, a=-2.0, b=2.0)
    return values


def unwrap_model(model: nn.Module) -> HRM:
    """The HRM inside a DDP (`.module`) or torch.compile (`._orig_mod`) wrapper."""
    while not isinstance(model, HRM):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    if not isinstance(model, HRM):
        raise TypeError(f"expected an HRM (possibly wrapped), got {type(model).__name__}")
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a shared H/L stack counts once)."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
