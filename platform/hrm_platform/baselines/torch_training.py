"""The training loop the torch baselines share (MLP, transformer), and the fitted network's predict.

A baseline network maps windows (B, W, F) to (action_logits (B, 3), quantity (B,) in [0, 1]). It is trained
on the HRM's per-segment loss (`act.segment_losses`: action cross entropy + quantity_loss_weight x quantity
MSE; the HRM's q_halt term has no counterpart here) with AdamW for `epochs` epochs, and the weights of the
epoch with the best val accuracy are kept.

Determinism: the network is built and trained inside `torch.random.fork_rng` seeded with `seed`, the
shuffles come from a numpy Generator of the same seed, and torch runs on `config.threads` threads; so one
seed gives the same weights on CPU, and the caller's RNG and thread count are left as they were.

    baseline = fit_network("mlp", lambda: LastBarMLP(13, 64), bundle.train, bundle.val, config, seed=0)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from hrm_platform.actions import N_ACTIONS
from hrm_platform.baselines.base import BaselineOutputs, check_windows, normalised_probabilities, train_positions
from hrm_platform.config import BaselineConfig
from hrm_platform.data.dataset import WindowDataset
from hrm_platform.model.act import segment_losses
from hrm_platform.model.hrm import HRMOutputs


class DecisionHeads(nn.Module):
    """The HRM's decision heads without the ACT Q head: action logits (B, 3) and quantity (B,) in [0, 1]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.action = nn.Linear(width, N_ACTIONS)
        self.quantity = nn.Linear(width, 1)

    def forward(self, summary: Tensor) -> tuple[Tensor, Tensor]:
        return self.action(summary), torch.sigmoid(self.quantity(summary)[:, 0])  # (B, 3), (B,)


@dataclass
class TorchBaseline:
    """A fitted torch baseline: the network (CPU, eval mode) and the window shape it was fitted on."""

    name: str
    network: nn.Module
    window: int
    n_features: int
    batch_size: int
    val_accuracy: list[float] = field(default_factory=list)  # per epoch; the best epoch's weights are kept

    def predict(self, windows: np.ndarray) -> BaselineOutputs:
        windows = check_windows(windows, self.window, self.n_features)  # (N, W, F)
        probabilities, quantities = [], []
        with torch.no_grad():
            for start in range(0, windows.shape[0], self.batch_size):
                logits, quantity = self.network(torch.from_numpy(windows[start : start + self.batch_size]))
                probabilities.append(torch.softmax(logits.float(), dim=-1).numpy())  # (b, 3)
                quantities.append(quantity.float().clamp(0.0, 1.0).numpy())  # (b,)
        if not probabilities:
            return BaselineOutputs(np.zeros((0, N_ACTIONS), np.float32), np.zeros(0, np.float32))
        return BaselineOutputs(normalised_probabilities(np.concatenate(probabilities)), np.concatenate(quantities))


def fit_network(
    name: str,
    build: Callable[[], nn.Module],
    train: WindowDataset,
    val: WindowDataset,
    config: BaselineConfig,
    seed: int,
    device: str = "cpu",
) -> TorchBaseline:
    """Build (under the seed) and train a network; returns it on CPU with its best val-accuracy weights."""
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build().to(device)
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        shuffles = np.random.default_rng(seed)
        positions = train_positions(train, config.max_train_samples, seed)
        history: list[float] = []
        best_state, best_accuracy = None, -np.inf
        for _ in range(config.epochs):
            train_epoch(network, train, shuffles.permutation(positions), optimizer, config, device)
            history.append(accuracy(network, val, config.batch_size, device))
            if history[-1] > best_accuracy:  # NaN (no val windows) never is: the last epoch is kept
                best_state, best_accuracy = copy.deepcopy(network.state_dict()), history[-1]
        if best_state is not None:
            network.load_state_dict(best_state)
    network = network.cpu().eval()
    return TorchBaseline(name, network, train.window, train.n_features, config.batch_size, history)


def train_epoch(
    network: nn.Module,
    train: WindowDataset,
    order: np.ndarray,
    optimizer: torch.optim.Optimizer,
    config: BaselineConfig,
    device: str,
) -> None:
    """One pass over the train windows at `order` (n,), batch_size at a time."""
    network.train()
    for start in range(0, order.shape[0], config.batch_size):
        windows, actions, quantities = (t.to(device) for t in train.batch(order[start : start + config.batch_size]))
        action_logits, quantity = network(windows)  # (B, 3), (B,)
        loss = baseline_loss(action_logits, quantity, actions, quantities, config.quantity_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def baseline_loss(
    action_logits: Tensor, quantity: Tensor, actions: Tensor, quantities: Tensor, quantity_loss_weight: float
) -> Tensor:
    """Mean over the batch of the HRM's segment loss without its q_halt term (a baseline has no Q head)."""
    unused_q = torch.zeros_like(quantity)  # segment_losses reads q_halt; its term is dropped below
    losses = segment_losses(HRMOutputs(action_logits, quantity, unused_q, unused_q), actions, quantities)
    return (losses.action + quantity_loss_weight * losses.quantity).mean()


def accuracy(network: nn.Module, dataset: WindowDataset, batch_size: int, device: str) -> float:
    """Share of the dataset's windows whose argmax action is the label (NaN for an empty dataset)."""
    network.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            windows, actions, _ = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
            action_logits, _ = network(windows.to(device))
            correct += int((action_logits.argmax(dim=-1).cpu() == actions).sum())
    return correct / len(dataset) if len(dataset) else float("nan")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on `threads` intra-op threads, then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
