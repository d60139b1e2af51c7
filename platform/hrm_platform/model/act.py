"""Deep supervision with ACT halting (HRM paper, Fig. 4) and ACT inference.

Training, per batch (`deep_supervision_step`):

    carry = initial carry
    for segment in 1..M:
        carry, outputs = model(carry, windows)        # carry comes back detached
        loss = CE(action) + w_q * quantity MSE + w_act * (BCE(q_halt, correct) + BCE(previous q_continue, value))
                                                      # (no q_continue term with model.halting='bce')
        backward; clip; optimizer step                # one step per segment
        halt samples with q_halt > q_continue (not before their exploration minimum)
        stop when every sample on every rank has halted

Q targets: q_halt's target is whether the segment's action is right (the reward of stopping now), as in
the paper. q_continue's target is the value of the next segment, also as in the paper: sigmoid(next q_halt)
if the next segment is the last one, else sigmoid(max(next q_halt, next q_continue)). Our simplification:
the paper runs an extra no-grad forward of the next segment to get those values; we reuse the next
segment's real forward instead, which deep supervision runs anyway, and apply segment k's q_continue loss
during segment k+1's step, through the Q head on segment k's (detached) summary token. That makes the
bootstrap free (the extra forward would cost a large share of a step) at the price that q_continue's loss trains
only the Q head's linear layer, not the trunk (q_halt's loss and the action loss still shape the trunk), and
that its target comes from parameters one optimizer step newer. Exploration: with probability epsilon a
sample gets a minimum of uniform{2..M} segments before it may halt, so the Q head also learns what later
segments achieve.

Inference (`act_inference`) runs a plain segment function (eager, compiled or int8) under no_grad; each
sample stops at q_halt > q_continue or at its own budget, and its outputs are frozen from then on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrm_platform.actions import N_ACTIONS
from hrm_platform.model.hrm import HRM, HRMCarry, HRMOutputs, unwrap_model

SegmentFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]


@dataclass
class SegmentStepMetrics:
    """What one deep-supervision step did; lists have one entry per segment run.

    loss: the optimised (masked) loss; accuracy: action accuracy over the whole batch at that segment (halted
    samples are still computed, only not trained); active_fraction: share of samples still running;
    segments_used: mean over samples of the segment at which each halted (M if it never did).
    """

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    segments_used: float = 0.0
    active_fraction: list[float] = field(default_factory=list)
    q_halt_accuracy: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)

    @property
    def segments_run(self) -> int:
        return len(self.loss)


@dataclass
class SegmentLosses:
    """Per-sample loss terms of one segment, each (B,) (q_continue's is applied a segment later)."""

    action: Tensor
    quantity: Tensor
    q_halt: Tensor


@dataclass
class ActResult:
    """ACT inference: probabilities (B, 3), quantity (B,), confidence (B,), segments_used (B,) int64, q_halt (B,)."""

    probabilities: Tensor
    quantity: Tensor
    confidence: Tensor
    segments_used: Tensor
    q_halt: Tensor


# ---------------------------------------------------------------------------------------------- training


def deep_supervision_step(
    model: nn.Module,
    windows: Tensor,
    actions: Tensor,
    quantities: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    max_segments: int,
    halt_exploration: float,
    quantity_loss_weight: float,
    q_loss_weight: float,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    all_ranks_halted: Callable[[bool], bool] = lambda flag: flag,
    before_optimizer_step: Callable[[], None] | None = None,
) -> SegmentStepMetrics:
    """Deep supervision on one batch: windows (B, W, F), actions (B,) int64, quantities (B,) float in [0, 1].

    `model` is the HRM or a DDP wrapper of it (only `model(carry, windows)` is called with gradients).
    Every rank runs the same number of segments: the loop leaves early only when `all_ranks_halted(flag)`,
    given this rank's "all my samples halted", returns True (pass an all-reduce under DDP).
    `before_optimizer_step()` is called after backward and clipping, right before each optimizer step.
    """
    hrm = unwrap_model(model)
    batch_size = windows.shape[0]
    device = windows.device
    carry = hrm.initial_carry(batch_size, device)
    halted = torch.zeros(batch_size, dtype=torch.bool, device=device)
    segments_used = torch.full((batch_size,), max_segments, dtype=torch.int64, device=device)
    min_segments = exploration_min_segments(batch_size, max_segments, halt_exploration, device)
    pending: PendingContinue | None = None  # the previous segment's q_continue, waiting for its target
    trains_continue = hrm.config.halting == "q_learning"
    recorder = _StepRecorder()
    for segment_number in range(1, max_segments + 1):
        active = ~halted  # (B,) samples that still train at this segment
        with _autocast(device, autocast_dtype):
            carry, outputs = model(carry, windows)
        is_last = segment_number == max_segments
        losses = segment_losses(outputs, actions, quantities)
        per_sample = losses.action + quantity_loss_weight * losses.quantity + q_loss_weight * losses.q_halt
        loss = (per_sample * active).sum() / batch_size  # halted samples stop contributing
        if pending is not None:
            continue_loss = pending.loss(hrm, continue_value(outputs, is_last))  # (B,)
            loss = loss + q_loss_weight * (continue_loss * pending.active).sum() / batch_size
        grad_norm = _backward_and_step(model, loss, optimizer, scaler, grad_clip, before_optimizer_step)

        halt_now = halting_decision(outputs, segment_number, max_segments, min_segments)
        segments_used = torch.where(active & halt_now, segment_number, segments_used)
        recorder.add(outputs, actions, loss, active, grad_norm)
        # Every sample trained at k gets its q_continue target at k+1 (halted ones too: the batch still runs them);
        # with model.halting='bce' q_continue is fixed at 0 and has no loss.
        if trains_continue:
            pending = PendingContinue(outputs.summary, active)
        halted = halted | halt_now
        # The one host sync per segment: whether to run another one.
        if not is_last and all_ranks_halted(bool(halted.all())):
            break
    return recorder.finish(segments_used)


@dataclass
class PendingContinue:
    """Segment k's summary (B, D) detached and the samples (B,) bool whose q_continue is trained at k+1."""

    summary: Tensor
    active: Tensor

    def loss(self, hrm: HRM, target: Tensor) -> Tensor:
        """(B,) BCE of segment k's q_continue logit against the value of segment k+1."""
        return F.binary_cross_entropy_with_logits(hrm.heads.q_continue(self.summary), target, reduction="none")


def continue_value(next_outputs: HRMOutputs, next_is_last: bool) -> Tensor:
    """(B,) in [0, 1], no grad: what reaching this segment is worth (halt here, or the best of halt/continue)."""
    with torch.no_grad():
        if next_is_last:
            return torch.sigmoid(next_outputs.q_halt)
        return torch.sigmoid(torch.maximum(next_outputs.q_halt, next_outputs.q_continue))


def exploration_min_segments(batch_size: int, max_segments: int, epsilon: float, device: torch.device | str) -> Tensor:
    """(B,) int64: 1 for most samples; uniform{2..M} for a share epsilon of them (none when M == 1)."""
    ones = torch.ones(batch_size, dtype=torch.int64, device=device)
    if max_segments < 2:
        return ones
    explore = torch.rand(batch_size, device=device) < epsilon
    forced = torch.randint(2, max_segments + 1, (batch_size,), device=device)
    return torch.where(explore, forced, ones)


def halting_decision(outputs: HRMOutputs, segment_number: int, max_segments: int, min_segments: Tensor) -> Tensor:
    """(B,) bool: halt after this segment (training rule: Q says halt and the exploration minimum is met)."""
    q_says_halt = (outputs.q_halt > outputs.q_continue) & (segment_number >= min_segments)
    if segment_number >= max_segments:
        return torch.ones_like(q_says_halt)
    return q_says_halt


def segment_losses(outputs: HRMOutputs, actions: Tensor, quantities: Tensor) -> SegmentLosses:
    """Per-sample losses (B,): action CE, quantity MSE, and q_halt BCE against 'the action is right'."""
    action_loss = F.cross_entropy(outputs.action_logits, actions, reduction="none")
    quantity_loss = (outputs.quantity - quantities.float()).pow(2)
    correct = (outputs.action_logits.argmax(dim=-1) == actions).float()
    q_halt_loss = F.binary_cross_entropy_with_logits(outputs.q_halt, correct, reduction="none")
    return SegmentLosses(action_loss, quantity_loss, q_halt_loss)


def _backward_and_step(
    model: nn.Module,
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
    before_optimizer_step: Callable[[], None] | None,
) -> Tensor | None:
    """Backward, optional unscale + clip, hook, step. Returns the gradient norm as a 0-dim tensor on the
    device (None when not clipped): reading it would stall the host until the GPU catches up."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    grad_norm = None
    if grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if before_optimizer_step is not None:
        before_optimizer_step()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return grad_norm


class _StepRecorder:
    """Per-segment metrics kept on the device as 0-dim tensors and read back once per step (`finish`), so
    recording adds no host sync to the segment loop (five per segment before: a GPU stall each)."""

    def __init__(self) -> None:
        self.rows: list[Tensor] = []  # one (5,) float32 row per segment

    def add(self, outputs: HRMOutputs, actions: Tensor, loss: Tensor, active: Tensor, grad_norm: Tensor | None) -> None:
        with torch.no_grad():
            correct = (outputs.action_logits.argmax(dim=-1) == actions).float()  # (B,)
            says_right = (outputs.q_halt > 0).float()  # the Q head's guess that the action is right
            norm = grad_norm if grad_norm is not None else torch.tensor(float("nan"), device=loss.device)
            row = (loss.detach(), correct.mean(), active.float().mean(), (says_right == correct).float().mean(), norm)
            self.rows.append(torch.stack([value.float() for value in row]))

    def finish(self, segments_used: Tensor) -> SegmentStepMetrics:
        """One device-to-host copy: every segment's row and the batch's mean halting segment."""
        table = torch.stack(self.rows)  # (S, 5)
        flat = torch.cat((table.flatten(), segments_used.float().mean()[None])).tolist()
        columns = [flat[i : 5 * len(self.rows) : 5] for i in range(5)]
        loss, accuracy, active_fraction, q_halt_accuracy, grad_norm = columns
        return SegmentStepMetrics(
            loss=loss,
            accuracy=accuracy,
            segments_used=flat[-1],
            active_fraction=active_fraction,
            q_halt_accuracy=q_halt_accuracy,
            grad_norm=grad_norm,
        )


def _autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# --------------------------------------------------------------------------------------------- inference


def act_inference(
    segment_fn: SegmentFn,
    x: Tensor,
    carry: HRMCarry,
    budgets: Tensor | None,
    max_segments: int,
    use_halting: bool = True,
) -> ActResult:
    """Run segments until every sample halted (q_halt > q_continue) or reached its budget.

    x (B, W+1, D) from `HRM.embed`; budgets (B,) int64 clamped to 1..max_segments (None = max_segments).
    A halted sample's outputs are frozen; the batch keeps a fixed shape (compiled functions do not
    recompile). `use_halting=False` runs every sample to its budget (the reference for ACT's accuracy cost).
    """
    batch_size = x.shape[0]
    device = x.device
    limits = segment_limits(budgets, batch_size, max_segments, device)  # (B,)
    probabilities = torch.zeros(batch_size, N_ACTIONS, device=device)
    quantity = torch.zeros(batch_size, device=device)
    q_halt = torch.zeros(batch_size, device=device)
    segments_used = torch.zeros(batch_size, dtype=torch.int64, device=device)
    halted = torch.zeros(batch_size, dtype=torch.bool, device=device)
    z_H, z_L = carry.z_H, carry.z_L
    with torch.no_grad():
        for segment_number in range(1, int(limits.max()) + 1):
            z_H, z_L, logits, segment_quantity, segment_q_halt, segment_q_continue = segment_fn(z_H, z_L, x)
            running = ~halted  # (B,)
            probabilities = torch.where(running[:, None], torch.softmax(logits.float(), dim=-1), probabilities)
            quantity = torch.where(running, segment_quantity.float(), quantity)
            q_halt = torch.where(running, segment_q_halt.float(), q_halt)
            segments_used = torch.where(running, segment_number, segments_used)
            halt_now = segment_number >= limits
            if use_halting:
                halt_now = halt_now | (segment_q_halt > segment_q_continue)
            halted = halted | halt_now
            if bool(halted.all()):
                break
    confidence = probabilities.max(dim=-1).values
    return ActResult(probabilities, quantity, confidence, segments_used, q_halt)


def segment_limits(budgets: Tensor | None, batch_size: int, max_segments: int, device: torch.device) -> Tensor:
    """(B,) int64 per-sample segment limits on `device`: budgets clamped to 1..max_segments (None = all max)."""
    if budgets is None:
        return torch.full((batch_size,), max_segments, dtype=torch.int64, device=device)
    if budgets.shape != (batch_size,):
        raise ValueError(f"budgets must have shape ({batch_size},), got {tuple(budgets.shape)}")
    return budgets.to(device=device, dtype=torch.int64).clamp(1, max_segments)


def predict(
    model: nn.Module,
    windows: Tensor,
    max_segments: int | None = None,
    budgets: Tensor | None = None,
    use_halting: bool = True,
) -> ActResult:
    """ACT inference of an eager HRM on windows (B, W, F); max_segments defaults to the model's M."""
    hrm = unwrap_model(model)
    limit = hrm.config.max_segments if max_segments is None else max_segments
    with torch.no_grad():
        x = hrm.embed(windows)  # (B, W+1, D)
        carry = hrm.initial_carry(windows.shape[0], windows.device)
        return act_inference(hrm.segment, x, carry, budgets, limit, use_halting)


def outputs_per_segment(model: nn.Module, windows: Tensor, n_segments: int) -> list[HRMOutputs]:
    """The heads after each of n_segments segments, no halting (for accuracy-per-segment analyses)."""
    hrm = unwrap_model(model)
    results = []
    with torch.no_grad():
        x = hrm.embed(windows)
        carry = hrm.initial_carry(windows.shape[0], windows.device)
        z_H, z_L = carry.z_H, carry.z_L
        for _ in range(n_segments):
            z_H, z_L, logits, quantity, q_halt, q_continue = hrm.segment(z_H, z_L, x)
            results.append(HRMOutputs(logits, quantity, q_halt, q_continue))
    return results
