"""One epoch of deep-supervision training and one validation pass: the part shared by the Ray Train loop
(`loop.py`, one process per DDP rank) and `train_local` (one process, no Ray). Nothing here imports Ray.

The state a run advances is `TrainingRun` (model, optimizer, scheduler, counters); ranks agree through a
`Collective` (all-reduce over torch.distributed, or the identity in one process). Every rank runs the same
number of batches and segments, so DDP's gradient all-reduces line up.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from hrm_platform.config import PlatformConfig, TrainConfig
from hrm_platform.data.dataset import WindowDataset
from hrm_platform.data.features import FeatureSpec
from hrm_platform.model.act import SegmentStepMetrics, deep_supervision_step, predict
from hrm_platform.model.flops import training_flops_per_sample_segment
from hrm_platform.model.hrm import HRM, unwrap_model
from hrm_platform.training.checkpoint import CheckpointError, LoadedCheckpoint, save_checkpoint
from hrm_platform.training.prefetch import on_device
from hrm_platform.training.throughput import throughput_figures

MIN_LR_FACTOR = 0.1  # the cosine schedule decays to 10% of train.lr
VALIDATION_BATCH_FACTOR = 4  # validation runs without gradients: larger batches fit


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the epoch and the step."""


# ---------------------------------------------------------------------------------------------- ranks


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


# ---------------------------------------------------------------------------------------------- state


@dataclass
class TrainingRun:
    """What one training run advances; `epoch` counts completed epochs, `step` completed batches."""

    model: nn.Module  # the HRM, or its DDP wrapper
    step_model: nn.Module  # what deep supervision calls per segment: `model`, or torch.compile of it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None
    device: torch.device
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    first_step_unix: float | None = None  # wall clock of this process's first finished batch

    @property
    def hrm(self) -> HRM:
        return unwrap_model(self.model)


def build_model(config: PlatformConfig, n_features: int) -> HRM:
    """The HRM with weights from train.seed: identical on every rank before DDP's broadcast."""
    with _seeded(config.train.seed):
        return HRM(config.model, n_features=n_features, window=config.data.window)


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (not on biases, norm gains or the summary token).

    On CUDA the fused implementation: one kernel per step instead of a dozen per parameter group, which
    matters here because deep supervision steps the optimizer once per segment.
    """
    decayed, plain = [], []
    for name, parameter in unwrap_model(model).named_parameters():
        if parameter.requires_grad:
            is_matrix = parameter.ndim >= 2 and "summary_token" not in name
            (decayed if is_matrix else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": train.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    on_cuda = all(parameter.is_cuda for parameter in decayed + plain)
    return torch.optim.AdamW(groups, lr=train.lr, fused=on_cuda or None)


def compiled_for_training(model: nn.Module, train: TrainConfig) -> nn.Module:
    """The module deep supervision calls per segment: with train.compile, torch.compile of it (Inductor fuses
    the segment's forward and its backward; it shares the parameters, so the optimizer, DDP and checkpoints
    see the same weights); else the module itself. Validation and serving keep the eager HRM."""
    return torch.compile(model, mode=train.compile_mode) if train.compile else model


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then cosine down to MIN_LR_FACTOR at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return MIN_LR_FACTOR + (1.0 - MIN_LR_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
    total_steps = steps_per_epoch * train.epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train.warmup_steps, total_steps)
    )


def precision_settings(train: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and grad scaler: fp32 none; bf16 autocast (CPU or GPU); fp16 autocast + scaler (GPU)."""
    if train.precision == "bf16":
        return torch.bfloat16, None
    if train.precision == "fp16":
        return torch.float16, torch.amp.GradScaler(device.type)
    return None, None


def new_training_run(model: nn.Module, config: PlatformConfig, device: torch.device, steps_per_epoch: int) -> TrainingRun:
    optimizer = build_optimizer(model, config.train)
    autocast_dtype, scaler = precision_settings(config.train, device)
    return TrainingRun(
        model=model,
        step_model=compiled_for_training(model, config.train),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config.train, steps_per_epoch),
        scaler=scaler,
        autocast_dtype=autocast_dtype,
        device=device,
    )


# ---------------------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------------------- training


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
    dataset: WindowDataset,
    sampler: DistributedSampler,
    config: PlatformConfig,
    collective: Collective,
) -> dict[str, Any]:
    """Train epoch `run.epoch + 1` on this rank's shard; returns metrics reduced over all ranks."""
    epoch = run.epoch + 1
    train = config.train
    sampler.set_epoch(epoch)
    positions = list(sampler)
    n_batches = batches_per_epoch(len(positions), train.batch_size, train.max_train_batches)
    totals = _EpochTotals(config.model.max_segments)
    run.model.train()
    started = time.perf_counter()
    batches = iterate_batches(dataset, positions, train.batch_size, n_batches)
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
        run.scheduler.step()
        run.step += 1
        if run.first_step_unix is None:
            run.first_step_unix = time.time()
        totals.add(step_metrics, windows.shape[0])
    elapsed = time.perf_counter() - started
    run.epoch = epoch
    return _reduce_epoch_metrics(run, totals, elapsed, collective, train.peak_tflops)


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
    run: TrainingRun, totals: _EpochTotals, elapsed: float, collective: Collective, peak_tflops: float | None
) -> dict[str, Any]:
    summed = collective.sum(totals.as_tensor()).numpy()
    (loss, active, accuracy, counts), scalars = _EpochTotals.split(summed, totals.max_segments)
    final_accuracy, segments_used, segments_run, batches, samples, sample_segments = scalars
    slowest_s, peak_mb = collective.max(torch.tensor([elapsed, peak_memory_mb(run.device)], dtype=torch.float64)).tolist()
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
        "world_size": collective.world_size,
        "distributed_backend": collective.backend,
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a CUDA device; otherwise this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ---------------------------------------------------------------------------------------------- validation


def validate(run: TrainingRun, dataset: WindowDataset, config: PlatformConfig, collective: Collective) -> dict[str, float]:
    """ACT inference (per-sample halting, as served) on this rank's strided share of the split, reduced."""
    hrm = run.hrm
    hrm.eval()
    positions = list(range(collective.rank, len(dataset), collective.world_size))
    batch_size = config.train.batch_size * VALIDATION_BATCH_FACTOR
    n_batches = math.ceil(len(positions) / batch_size)
    totals = torch.zeros(4, dtype=torch.float64)  # correct, nll, segments, samples
    autocast = torch.autocast(run.device.type, dtype=run.autocast_dtype) if run.autocast_dtype else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for windows, actions, _ in iterate_batches(dataset, positions, batch_size, n_batches):
            windows, actions = windows.to(run.device), actions.to(run.device)
            result = predict(hrm, windows)
            chosen = result.probabilities.gather(1, actions[:, None])[:, 0].clamp_min(1e-12)  # (B,)
            totals += torch.tensor([
                float((result.probabilities.argmax(dim=-1) == actions).sum()),
                float(-chosen.log().sum()),
                float(result.segments_used.sum()),
                float(actions.shape[0]),
            ], dtype=torch.float64)
    hrm.train()
    correct, nll, segments, samples = collective.sum(totals).tolist()
    if samples == 0:
        return {"val_accuracy": float("nan"), "val_loss": float("nan"), "val_mean_segments": float("nan")}
    return {"val_accuracy": correct / samples, "val_loss": nll / samples, "val_mean_segments": segments / samples}


def should_validate(epoch: int, config: PlatformConfig) -> bool:
    """Every validation_frequency epochs, and always at the last epoch."""
    return epoch % config.train.validation_frequency == 0 or epoch == config.train.epochs


# ---------------------------------------------------------------------------------------------- resume


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples all the way down; a checkpoint may have turned them into lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def training_state(run: TrainingRun, rng_by_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything beyond the weights that an exact continuation needs."""
    state: dict[str, Any] = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": run.epoch,
        "step": run.step,
        "rng_by_rank": rng_by_rank,
    }
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    return state


def restore_training_state(run: TrainingRun, state: dict[str, Any], history: list[dict[str, Any]], rank: int, seed: int) -> None:
    """Continue after epoch state["epoch"]; a rank the checkpoint has no RNG state for reseeds from (seed, rank, epoch)."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    run.history = list(history)
    rng_by_rank = state.get("rng_by_rank", [])
    if rank < len(rng_by_rank):
        restore_rng_state(rng_by_rank[rank])
    else:
        seed_rank(seed, rank, run.epoch)


def seed_rank(seed: int, rank: int, epoch: int = 0) -> None:
    """Distinct, reproducible RNG streams per rank (ACT exploration draws differ between ranks)."""
    mixed = int.from_bytes(hashlib.sha256(f"{seed}/{rank}/{epoch}".encode()).digest()[:4], "little")
    torch.manual_seed(mixed)
    random.seed(mixed)
    np.random.seed(mixed)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch seed without disturbing the caller's RNG stream."""
    saved = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved)


def parameter_fingerprint(model: nn.Module) -> str:
    """sha256 prefix of every parameter's bytes: equal on two ranks iff their weights are bit-identical."""
    digest = hashlib.sha256()
    for name, parameter in unwrap_model(model).named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def write_checkpoint(
    directory: Path, run: TrainingRun, config: PlatformConfig, feature_spec: FeatureSpec,
    metrics: dict[str, Any], rng_by_rank: list[dict[str, Any]],
) -> Path:
    """The checkpoint of the epoch just finished (weights of the unwrapped HRM, never DDP's `module.` keys)."""
    return save_checkpoint(
        directory,
        model_state=run.hrm.state_dict(),
        config=config,
        feature_spec=feature_spec,
        epoch=run.epoch,
        metrics=metrics,
        training_state=training_state(run, rng_by_rank),
        history=run.history,
    )


def resume_from(loaded: LoadedCheckpoint, run: TrainingRun, config: PlatformConfig, rank: int) -> None:
    """Continue `run` after the checkpoint's epoch; refuses a checkpoint of another model or data set."""
    for section in ("model", "data"):
        saved, current = getattr(loaded.config, section), getattr(config, section)
        if saved != current:
            changed = sorted(k for k in type(current).model_fields if getattr(saved, k) != getattr(current, k))
            raise CheckpointError(
                f"cannot resume from {loaded.directory}: its {section} config differs in {changed}; "
                f"start a new run (another train.name) or restore those {section}.* values"
            )
    run.hrm.load_state_dict(loaded.model_state, strict=True)
    restore_training_state(
        run, loaded.training_state, loaded.manifest["metrics"]["history"], rank=rank, seed=config.train.seed
    )


def format_progress(metrics: dict[str, Any], total_epochs: int, seconds_per_epoch: float) -> str:
    """One line per epoch: epoch, loss, accuracy (train and validation), ACT segments, throughput, ETA."""
    remaining_s = max(0.0, (total_epochs - metrics["epoch"]) * seconds_per_epoch)
    validation = metrics.get("val_accuracy")
    parts = [
        f"epoch {metrics['epoch']}/{total_epochs}",
        f"loss {metrics['train_loss']:.4f}",
        f"acc {metrics['train_accuracy']:.3f}",
        f"val_acc {validation:.3f}" if validation is not None and math.isfinite(validation) else "val_acc -",
        f"segments {metrics['train_mean_segments']:.2f}",
        f"{metrics['samples_per_s']:.0f} samples/s",
        _compute_rate(metrics),
        f"ETA {int(remaining_s // 60)}:{int(remaining_s % 60):02d}",
    ]
    return "  ".join(part for part in parts if part)


def _compute_rate(metrics: dict[str, Any]) -> str:
    """'2.31 TFLOP/s' (model FLOPs), with the MFU on a GPU of known peak."""
    achieved = metrics.get("achieved_tflops")
    if achieved is None:
        return ""
    mfu = metrics.get("mfu")
    return f"{achieved:.2f} TFLOP/s" + (f" (MFU {mfu:.1%})" if mfu is not None else "")
