"""Batches onto the training device, with the next one gathered while the current one trains.

    for windows, actions, quantities in on_device(iterate_batches(...), run.device):
        ...

On CUDA a worker thread gathers the next batch (numpy fancy indexing releases the GIL) and pins it, and the
copy to the GPU is asynchronous, so the GPU never waits for the host's data work. On CPU, where a second
thread would compete with torch's own for the cores, batches are gathered in line.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

Batch = tuple[Tensor, ...]


def on_device(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """Each batch's tensors on `device`; on CUDA the next batch is prepared ahead in a worker thread."""
    if device.type != "cuda":
        for batch in batches:
            yield tuple(tensor.to(device) for tensor in batch)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hrm-prefetch") as worker:
        upcoming = worker.submit(_next_pinned, batches)
        while (batch := upcoming.result()) is not None:
            upcoming = worker.submit(_next_pinned, batches)
            yield tuple(tensor.to(device, non_blocking=True) for tensor in batch)


def _next_pinned(batches: Iterator[Batch]) -> Batch | None:
    """The next batch in page-locked memory (what makes the host-to-device copy asynchronous), None at the end."""
    batch = next(batches, None)
    return None if batch is None else tuple(tensor.pin_memory() for tensor in batch)
