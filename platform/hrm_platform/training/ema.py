"""An exponential moving average of the HRM's weights (`train.ema_decay`), for validation and serving.

    average = WeightAverage.of(run.hrm, decay=0.999)   # starts at the HRM's current weights
    average.update(run.hrm)                            # after every training batch: ema = d*ema + (1-d)*w
    checkpoint ema.pt = average.state_dict()           # an HRM state_dict: `load_model` serves it as is

It is torch's `AveragedModel` with `get_ema_multi_avg_fn` over the unwrapped HRM (never its DDP or
torch.compile wrapper, whose deep copy would copy a process group or a compiled graph). Only parameters are
averaged: the buffers (z_H_init, z_L_init, rotary tables) never change in training, so the copy's stay equal
to the model's. DDP keeps every rank's parameters bit-identical, so each rank averaging its own copy keeps
the averages bit-identical too, with no communication.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from hrm_platform.model.hrm import HRM


@dataclass
class WeightAverage:
    """The averaged copy of an HRM; `model` is the averaged HRM, in eval mode, without gradients."""

    averaged: AveragedModel
    decay: float

    @classmethod
    def of(cls, hrm: HRM, decay: float) -> WeightAverage:
        """A copy of `hrm` (same device and dtype) that starts at its current weights."""
        averaged = AveragedModel(hrm, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        averaged.requires_grad_(False).eval()
        averaged.update_parameters(hrm)  # the first update copies: n_averaged 0 -> 1, so later ones lerp
        return cls(averaged=averaged, decay=decay)

    @property
    def model(self) -> HRM:
        return self.averaged.module

    def update(self, hrm: HRM) -> None:
        """ema <- decay * ema + (1 - decay) * weight, for every parameter (one foreach lerp per device)."""
        self.averaged.update_parameters(hrm)

    def restart_from(self, hrm: HRM) -> None:
        """Start again at `hrm`'s weights (a resumed run whose checkpoint has no average)."""
        self.model.load_state_dict(hrm.state_dict(), strict=True)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged HRM's state_dict: the same keys as the HRM's, so inference loads it strictly."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)


def new_weight_average(hrm: HRM, decay: float | None) -> WeightAverage | None:
    """The average `train.ema_decay` asks for; None when it is off."""
    return None if decay is None else WeightAverage.of(hrm, decay)
