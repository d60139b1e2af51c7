"""Hierarchical Reasoning Model over a window of market bars.

Tokens are the W bars of a window (projected to d_model) plus one learned summary token at position 0; the
heads read the summary token of the slow state z_H.

One segment (`HRM.segment`) runs h_cycles x l_cycles updates of two recurrent transformer modules:

    z_L <- L(z_L, z_H + x)            every update
    z_H <- H(z_H, z_L)                after every l_cycles L updates

Every update but the last L and the last H runs under `torch.no_grad` (the HRM paper's one-step gradient
approximation), so a segment's backward pass costs two module applications whatever the cycle counts.
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
        hidden = hidden + injection  # (B, T, D)
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
        self.L_level = ReasoningModule(config.l_layers, config)
        # Sharing registers the same module twice: one set of Parameters, updated by both levels.
        self.H_level = self.L_level if config.share_parameters else ReasoningModule(config.h_layers, config)
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

        Not detached: `forward` detaches the carry; at inference the caller runs under no_grad.
        """
        cos, sin = self.rotary(x.shape[1])  # (T, hd) each
        l_cycles = self.config.l_cycles
        total_updates = self.config.h_cycles * l_cycles
        with torch.no_grad():
            for update in range(1, total_updates):
                z_L = self.L_level(z_L, z_H + x, cos, sin)
                if update % l_cycles == 0:
                    z_H = self.H_level(z_H, z_L, cos, sin)
        # The one-step gradient: only these two updates are recorded for backward.
        use_checkpoint = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        z_L = self.L_level(z_L, z_H + x, cos, sin, use_checkpoint)  # (B, T, D)
        z_H = self.H_level(z_H, z_L, cos, sin, use_checkpoint)  # (B, T, D)
        action_logits, quantity, q_halt, q_continue = self.heads(z_H[:, 0])
        return z_H, z_L, action_logits, quantity, q_halt, q_continue

    def forward(self, carry: HRMCarry, windows: Tensor) -> tuple[HRMCarry, HRMOutputs]:
        """One segment with the one-step gradient; the returned carry is detached."""
        x = self.embed(windows)  # (B, W+1, D)
        z_H, z_L, action_logits, quantity, q_halt, q_continue = self.segment(carry.z_H, carry.z_L, x)
        carry = HRMCarry(z_H, z_L).detached()
        return carry, HRMOutputs(action_logits, quantity, q_halt, q_continue, summary=carry.z_H[:, 0])


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
