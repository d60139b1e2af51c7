"""How DDP ranks agree: all-reduces over torch.distributed, or the identity in one process.

    collective = Collective.from_process_group(device)   # rank, world size and backend of this process
    collective.sum(totals)                               # summed over ranks (the identity on one)
    collective.all_true(flag)                            # deep supervision's early stop, on every rank
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Collective:
    """How ranks agree. One process: rank 0 of 1 and every reduction is the identity."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collective tensors live (cuda for NCCL)

    @classmethod
    def from_process_group(cls, device: torch.device) -> Collective:
        if not (dist.is_available() and dist.is_initialized()):
            return cls(device=device)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)

    def sum(self, values: Tensor) -> Tensor:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Tensor) -> Tensor:
        return self._reduce(values, dist.ReduceOp.MAX)

    @property
    def backend(self) -> str:
        """The process group's backend (nccl, gloo), or 'none' in one process."""
        return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"

    def all_true(self, flag: bool) -> bool:
        """True when `flag` is True on every rank (deep supervision's early stop)."""
        if self.world_size == 1:
            return flag
        not_done = self.sum(torch.tensor([0.0 if flag else 1.0], device=self.device))
        return float(not_done.item()) == 0.0

    def gather_objects(self, value: Any) -> list[Any]:
        """One picklable value per rank, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def _reduce(self, values: Tensor, op: Any) -> Tensor:
        if self.world_size == 1:
            return values
        on_device = values.to(self.device)
        dist.all_reduce(on_device, op=op)
        return on_device.to(values.device)
