"""A plain transformer of about the HRM's size that reads the window once: no H/L recurrence, no ACT, no carry.

Tokens as in the HRM: a learned summary token at position 0, then the W bars projected to d_model; the
blocks are the HRM's (`TransformerBlock`, post-norm, rotary positions), as many as the HRM has distinct ones
(h_layers + l_layers, or l_layers when H and L share one stack), applied once in sequence. The heads read
the summary token. So the parameter count matches the HRM's less its 2-output Q head, and what separates
the two models is the recurrence and the adaptive computation alone.

    baseline = fit_transformer(bundle.train, bundle.val, config.model, BaselineConfig(), seed=0)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hrm_platform.baselines.torch_training import DecisionHeads, TorchBaseline, fit_network
from hrm_platform.config import BaselineConfig, ModelConfig
from hrm_platform.data.dataset import WindowDataset
from hrm_platform.model.layers import RotaryEmbedding, TransformerBlock


def hrm_block_count(config: ModelConfig) -> int:
    """The HRM's distinct transformer blocks (a shared H/L stack counts once, as in count_parameters)."""
    shared = config.share_parameters or config.arch == "trm"
    return config.l_layers if shared else config.h_layers + config.l_layers


class WindowTransformer(nn.Module):
    def __init__(self, config: ModelConfig, n_features: int, window: int) -> None:
        super().__init__()
        d_model = config.d_model
        self.input_proj = nn.Linear(n_features, d_model)
        self.summary_token = nn.Parameter(torch.randn(1, 1, d_model))
        self.rotary = RotaryEmbedding(d_model // config.n_heads, window + 1, config.rope_base)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, config.n_heads, config.ff_mult) for _ in range(hrm_block_count(config))
        )
        self.heads = DecisionHeads(d_model)

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        bar_tokens = self.input_proj(windows)  # (B, W, D)
        summary = self.summary_token.expand(windows.shape[0], -1, -1)  # (B, 1, D)
        hidden = torch.cat((summary, bar_tokens), dim=1)  # (B, W+1, D)
        cos, sin = self.rotary(hidden.shape[1])  # (W+1, hd) each
        for block in self.blocks:
            hidden = block(hidden, cos, sin)  # (B, W+1, D)
        return self.heads(hidden[:, 0])  # (B, 3), (B,)


def fit_transformer(
    train: WindowDataset,
    val: WindowDataset,
    model_config: ModelConfig,
    config: BaselineConfig,
    seed: int,
    device: str = "cpu",
) -> TorchBaseline:
    def build() -> WindowTransformer:
        return WindowTransformer(model_config, train.n_features, train.window)

    return fit_network("transformer", build, train, val, config, seed, device)
