"""Transformer building blocks of the HRM: RMSNorm, rotary embedding, SDPA attention, SwiGLU, a post-norm block.

Everything here is written so that `torch.jit.script`, `torch.jit.trace` and `torch.compile` accept it
(no tuple-unpacking of tensors, no data-dependent Python control flow), and every projection is an
`nn.Linear`, so `torch.ao.quantization.quantize_dynamic` turns it into int8.

Norm placement: post-norm, `x = norm(x + f(x))`, as in the HRM reference. The recurrent modules apply the
same blocks many times per segment and carry their state across segments; post-norm pins the state's RMS
at 1 after every block, so its scale cannot drift with the number of updates (a pre-norm residual stream
grows with every pass) and the injected input `z_H + x` always meets a state of the same size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain; computed in float32 so bf16/fp16 autocast stays stable."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, hidden: Tensor) -> Tensor:
        input_dtype = hidden.dtype
        hidden32 = hidden.float()
        hidden32 = hidden32 * torch.rsqrt(hidden32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (hidden32 * self.weight.float()).to(input_dtype)


class RotaryEmbedding(nn.Module):
    """Fixed rotary tables for `max_positions` tokens; buffers are not saved (they follow from the config)."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        inverse_frequency = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        positions = torch.arange(max_positions, dtype=torch.float32)
        angles = torch.outer(positions, inverse_frequency)  # (T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        return self.cos[:seq_len], self.sin[:seq_len]  # (T, hd) each


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, nh, T, hd); cos/sin (T, hd). Rotation in x's dtype (tables are cast, not x)."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Bidirectional multi-head self-attention over the window's tokens through `scaled_dot_product_attention`."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, seq_len, d_model = hidden.shape
        qkv = self.qkv(hidden).view(batch, seq_len, 3, self.n_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hd); indexed below, never tuple-unpacked
        query = apply_rotary(qkv[0], cos, sin)
        key = apply_rotary(qkv[1], cos, sin)
        value = qkv[2]
        attended = F.scaled_dot_product_attention(query, key, value)  # (B, nh, T, hd)
        attended = attended.transpose(1, 2).reshape(batch, seq_len, d_model)  # (B, T, D)
        return self.out(attended)


def swiglu_hidden_dim(d_model: int, ff_mult: float) -> int:
    """The feed-forward width: ff_mult * d_model rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(ff_mult * d_model / 8)) * 8)


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)), hidden width `swiglu_hidden_dim(d_model, ff_mult)`."""

    def __init__(self, d_model: int, ff_mult: float) -> None:
        super().__init__()
        hidden_dim = swiglu_hidden_dim(d_model, ff_mult)
        self.hidden_dim = hidden_dim
        self.gate_up = nn.Linear(d_model, 2 * hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, d_model, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        gate_up = self.gate_up(hidden)  # (B, T, 2 * H)
        gate = gate_up[..., : self.hidden_dim]
        up = gate_up[..., self.hidden_dim :]
        return self.down(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Post-norm block: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: float) -> None:
        super().__init__()
        self.attention = Attention(d_model, n_heads)
        self.attention_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, ff_mult)
        self.mlp_norm = RMSNorm(d_model)

    def forward(self, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        hidden = self.attention_norm(hidden + self.attention(hidden, cos, sin))  # (B, T, D)
        return self.mlp_norm(hidden + self.mlp(hidden))  # (B, T, D)
