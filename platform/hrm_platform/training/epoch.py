"""One epoch of deep-supervision training on this rank's shard, with its metrics reduced over all ranks.
Nothing here imports Ray: the Ray Train loop and `train_local` both run it through `training/fit.py`.

Every rank runs the same number of batches and segments, so DDP's gradient all-reduces line up; a
non-finite loss stops every rank together.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch
from torch import Tensor

from hrm_platform.config import PlatformConfig
from hrm_platform.model.act import SegmentStepMetrics, deep_supervision_step
from hrm_platform.model.flops import training_flops_per_sample_segment
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import TrainingData
from hrm_platform.training.prefetch import on_device
from hrm_platform.training.state import TrainingRun
from hrm_platform.training.throughput import throughput_figures


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the epoch and the step."""


@dataclass
class _EpochTotals:
    """Sums over this rank's batches; reduced across ranks at the end of the epoch.

    A segment's loss is summed over the samples still active there and divided by the batch size (halted
    samples stop contributing), so per-segment means divide by the summed active fraction: the loss per
    trained sample.
    """

    max_segments: int
    loss: np.ndarray = field(init=False)  # (M,) sum over batches of the segment's loss
    active: np.ndarray = field(init=False)  # (M,) sum over batches of the share of samples still active
    accuracy: np.ndarray = field(init=False)  # (M,) sum over batches of the whole batch's accuracy
    batches_at_segment: np.ndarray = field(init=False)  # (M,)
    final_accuracy: float = 0.0  # accuracy at the last segment each batch ran
    segments_used: float = 0.0  # ACT halting segment, mean over samples, summed over batches
    segments_run: float = 0.0
    batches: float = 0.0
    samples: float = 0.0
    sample_segments: float = 0.0  # sum over batches of batch size x segments run (what the FLOPs scale with)

    def __post_init__(self) -> None:
        self.loss, self.active, self.accuracy, self.batches_at_segment = np.zeros((4, self.max_segments))

    def add(self, step: SegmentStepMetrics, batch_size: int) -> None:
        run = step.segments_run
        self.loss[:run] += step.loss
        self.active[:run] += step.active_fraction
        self.accuracy[:run] += step.accuracy
        self.batches_at_segment[:run] += 1
        self.final_accuracy += step.accuracy[-1]
        self.segments_used += step.segments_used
        self.segments_run += run
        self.batches += 1
        self.samples += batch_size
        self.sample_segments += batch_size * run

    def as_tensor(self) -> Tensor:
        scalars = [
            self.final_accuracy, self.segments_used, self.segments_run, self.batches, self.samples,
            self.sample_segments,
        ]
        vectors = [self.loss, self.active, self.accuracy, self.batches_at_segment]
        return torch.tensor(np.concatenate([*vectors, scalars]), dtype=torch.float64)

    @staticmethod
    def split(summed: np.ndarray, max_segments: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Inverse of as_tensor on a reduced array: the four (M,) vectors and the six scalars."""
        vectors = [summed[i * max_segments : (i + 1) * max_segments] for i in range(4)]
        return vectors, summed[4 * max_segments :]


def train_epoch(
    run: TrainingRun,
    data: TrainingData,
    config: PlatformConfig,
    collective: Collective,
    after_first_step: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """Train epoch `run.epoch + 1` on this rank's shard of `data`; returns metrics reduced over all ranks.

    `after_first_step(seconds, n_batches)` is called once, after the epoch's first step (the slow-start warning).
    """
    epoch = run.epoch + 1
    train = config.train
    totals = _EpochTotals(config.model.max_segments)
    run.model.train()
    started = time.perf_counter()
    n_batches, batches = data.train_batches(epoch)
    process, private_peak = psutil.Process(), 0  # this worker's own resident memory, sampled after every step
    graph_steps = train.compile and train.compile_mode == "reduce-overhead"
    for windows, actions, quantities in on_device(batches, run.device):
        if graph_steps:  # a new batch: the previous batch's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        step_metrics = deep_supervision_step(
            run.step_model, windows, actions, quantities, run.optimizer,
            max_segments=config.model.max_segments,
            halt_exploration=config.model.halt_exploration,
            quantity_loss_weight=train.quantity_loss_weight,
            q_loss_weight=train.q_loss_weight,
            autocast_dtype=run.autocast_dtype,
            scaler=run.scaler,
            grad_clip=train.grad_clip,
            all_ranks_halted=collective.all_true,
        )
        _stop_on_non_finite_loss(step_metrics.loss, epoch, run.step + 1, collective)
        if run.ema is not None:  # once per batch, after its M optimizer steps
            run.ema.update(run.hrm)
        run.scheduler.step()
        run.step += 1
        if run.first_step_unix is None:
            run.first_step_unix = time.time()
        totals.add(step_metrics, windows.shape[0])
        private_peak = max(private_peak, private_resident_bytes(process))
        if after_first_step is not None and totals.batches == 1:
            after_first_step(time.perf_counter() - started, n_batches)
    elapsed = time.perf_counter() - started
    run.epoch = epoch
    return _reduce_epoch_metrics(run, totals, elapsed, private_peak / 2**20, collective, train.peak_tflops)


def _stop_on_non_finite_loss(losses: list[float], epoch: int, step: int, collective: Collective) -> None:
    """Every rank stops together (a lone rank raising would leave the others waiting in an all-reduce)."""
    bad_here = not all(math.isfinite(value) for value in losses)
    if collective.all_true(not bad_here):
        return
    where = f"this rank (rank {collective.rank})" if bad_here else "another rank"
    raise NonFiniteLossError(
        f"non-finite training loss at epoch {epoch}, step {step} on {where} (segment losses {losses}); "
        "no checkpoint was written for this epoch. Lower train.lr, keep train.grad_clip, or use "
        "train.precision=fp32"
    )


def _reduce_epoch_metrics(
    run: TrainingRun, totals: _EpochTotals, elapsed: float, private_peak_mb: float, collective: Collective,
    peak_tflops: float | None,
) -> dict[str, Any]:
    summed = collective.sum(totals.as_tensor()).numpy()
    (loss, active, accuracy, counts), scalars = _EpochTotals.split(summed, totals.max_segments)
    final_accuracy, segments_used, segments_run, batches, samples, sample_segments = scalars
    largest = collective.max(torch.tensor([elapsed, peak_memory_mb(run.device), private_peak_mb], dtype=torch.float64))
    slowest_s, peak_mb, private_peak_mb = largest.tolist()
    hrm = run.hrm
    flops = float(sample_segments) * training_flops_per_sample_segment(hrm.config, hrm.window, hrm.n_features)
    speed = throughput_figures(flops, slowest_s, run.device, collective.world_size, peak_tflops)
    return {
        "epoch": run.epoch,
        "step": run.step,
        "lr": float(run.scheduler.get_last_lr()[0]),
        "train_loss": float(loss.sum() / active.sum()),  # per trained sample and segment
        "train_loss_per_segment": [float(l / a) if a > 0 else None for l, a in zip(loss, active)],
        "train_accuracy": float(final_accuracy / batches),  # at the last segment each batch ran
        "train_accuracy_per_segment": [float(s / c) if c else None for s, c in zip(accuracy, counts)],
        "train_mean_segments": float(segments_used / batches),  # where ACT halted, averaged over samples
        "segments_run_per_batch": float(segments_run / batches),
        "samples": int(samples),
        "epoch_time_s": slowest_s,
        "samples_per_s": float(samples / slowest_s) if slowest_s > 0 else None,
        "model_flops_per_sample": float(flops / samples) if samples else None,  # at the segments run (model/flops.py)
        "achieved_tflops": speed["achieved_tflops"],  # all ranks together
        "mfu": speed["mfu"],  # against the dense bf16 peak of every device; None on CPU
        "peak_memory_mb": peak_mb,
        "private_memory_peak_mb": private_peak_mb,  # the most memory any rank held as its own during the steps
        "world_size": collective.world_size,
        "distributed_backend": collective.backend,
    }


def private_resident_bytes(process: psutil.Process) -> int:
    """Resident memory this process holds alone: RSS minus shared pages (libraries, and Ray's object store,
    whose pages a Ray Data consumer maps and which the node's object store budget already counts)."""
    memory = process.memory_info()
    return memory.rss - getattr(memory, "shared", 0)  # Linux; elsewhere psutil reports no shared pages


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a CUDA device; otherwise this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
