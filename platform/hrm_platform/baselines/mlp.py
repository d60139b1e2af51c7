"""An MLP on the last bar's features: what a window adds beyond its latest bar is what it cannot see.

Shapes: F -> mlp_hidden -> mlp_hidden -> (action logits (3,), quantity in [0, 1] through a sigmoid).

    baseline = fit_mlp(bundle.train, bundle.val, BaselineConfig(), seed=0)
"""

from __future__ import annotations

from torch import Tensor, nn

from hrm_platform.baselines.torch_training import DecisionHeads, TorchBaseline, fit_network
from hrm_platform.config import BaselineConfig
from hrm_platform.data.dataset import WindowDataset


class LastBarMLP(nn.Module):
    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.heads = DecisionHeads(hidden)

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.trunk(windows[:, -1])  # (B, F) last bar -> (B, H)
        return self.heads(hidden)  # (B, 3), (B,)


def fit_mlp(
    train: WindowDataset, val: WindowDataset, config: BaselineConfig, seed: int, device: str = "cpu"
) -> TorchBaseline:
    return fit_network("mlp", lambda: LastBarMLP(train.n_features, config.mlp_hidden), train, val, config, seed, device)
