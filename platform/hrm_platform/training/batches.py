"""Each rank's shard of the training windows, in batches gathered with one vectorised call each.

    sampler = make_sampler(bundle.train, collective, seed)      # set_epoch(e) reshuffles every epoch
    for windows, actions, quantities in iterate_batches(bundle.train, list(sampler), 128, n_batches): ...
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch import Tensor
from torch.utils.data import DistributedSampler

from hrm_platform.data.dataset import WindowDataset
from hrm_platform.training.collective import Collective


def make_sampler(dataset: WindowDataset, collective: Collective, seed: int, shuffle: bool = True) -> DistributedSampler:
    """Each rank's shard; set_epoch(e) reshuffles identically on every rank (and in one process)."""
    return DistributedSampler(
        dataset, num_replicas=collective.world_size, rank=collective.rank, shuffle=shuffle, seed=seed, drop_last=False
    )


def batches_per_epoch(shard_size: int, batch_size: int, max_batches: int | None) -> int:
    """Full batches per rank (at least one); every rank's shard has the same size, so the same count."""
    count = max(1, shard_size // batch_size)
    return min(count, max_batches) if max_batches is not None else count


def iterate_batches(
    dataset: WindowDataset, positions: list[int], batch_size: int, n_batches: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(windows (B, W, F), actions (B,), quantities (B,)) gathered in one vectorised call per batch."""
    for batch_number in range(n_batches):
        chunk = positions[batch_number * batch_size : (batch_number + 1) * batch_size]
        yield dataset.batch(np.asarray(chunk, dtype=np.int64))
