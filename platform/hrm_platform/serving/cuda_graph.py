"""ACT inference replayed from CUDA graphs: one launch per segment instead of hundreds of kernels.

At batch 1 a GPU engine is launch-bound: a segment of the GPU preset is ~400 small kernels, each launched
from Python, and `act_inference` reads the halting flags back after every segment. Here, per batch
bucket (`serve.cuda_graph_buckets`), two graphs are captured once:

    start     x = embed(windows); z_H, z_L = initial carry; outputs and halting state reset
    segment   one segment, then on the device: outputs of running samples updated, counter += 1,
              halted |= counter >= limit | (halting on & q_halt > q_continue)

A request batch is padded to the next bucket (padding rows get a budget of 1 and are discarded), `start`
is replayed once and `segment` max(budgets) times, with no host sync in between; the caller's one read of
the results is the only sync. Outputs equal `act_inference`'s: a halted sample's outputs are frozen, and
segments past every sample's halt change nothing (they are not skipped: deciding that would need a sync).

    runner = CudaGraphAct(model, model.segment, buckets=(1, 8, 32), max_segments=8)
    result = runner(windows, budgets=None, use_halting=True)     # windows (B, W, F); an ActResult

`capture=False` replays the same two steps eagerly (on any device): how the CPU tests check the buckets,
the padding and the on-device halting against `act_inference`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hrm_platform.actions import N_ACTIONS
from hrm_platform.model.act import ActResult, SegmentFn, segment_limits
from hrm_platform.model.hrm import HRM

WARM_UP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS handles, compiled kernels, allocator)


def bucket_for(batch_size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds batch_size, or the largest bucket (the batch then runs in chunks)."""
    return next((bucket for bucket in buckets if bucket >= batch_size), buckets[-1])


def bucket_chunks(batch_size: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, stop, bucket) per chunk of a batch: full chunks of the largest bucket, the rest padded up."""
    chunks, start = [], 0
    while start < batch_size:
        bucket = bucket_for(batch_size - start, buckets)
        stop = min(batch_size, start + bucket)
        chunks.append((start, stop, bucket))
        start = stop
    return chunks


def padded_limits(limits: Tensor, bucket: int) -> Tensor:
    """(bucket,) int64: the chunk's budgets, then 1 for the padding rows (they halt after one segment)."""
    padded = torch.ones(bucket, dtype=torch.int64)
    padded[: limits.shape[0]] = limits
    return padded


@dataclass
class _BucketGraphs:
    """Static buffers of one bucket (inputs, carry, outputs; the graphs read and write only these) and its
    two graphs. Shapes: windows (N, W, F), x/z_H/z_L (N, W+1, D), probabilities (N, 3), the rest (N,)."""

    windows: Tensor
    limits: Tensor
    use_halting: Tensor  # () bool
    counter: Tensor  # () int64: the segment number just run
    x: Tensor
    z_H: Tensor
    z_L: Tensor
    probabilities: Tensor
    quantity: Tensor
    q_halt: Tensor
    segments_used: Tensor
    halted: Tensor
    start: torch.cuda.CUDAGraph | _EagerReplay | None = None
    segment: torch.cuda.CUDAGraph | _EagerReplay | None = None


class _EagerReplay:
    """The uncaptured twin of a CUDA graph: `replay()` runs the ops."""

    def __init__(self, ops: Callable[[], None]) -> None:
        self.ops = ops

    def replay(self) -> None:
        self.ops()


class CudaGraphAct:
    """ACT inference of `model` through `segment_fn` from captured CUDA graphs, one pair per bucket.

    Thread-safe (a lock: the buckets' buffers are shared state). `segment_fn` may be a torch.compile'd
    segment: warm-up compiles it for each bucket's shape before capture.
    """

    def __init__(
        self, model: HRM, segment_fn: SegmentFn, buckets: Sequence[int], max_segments: int, capture: bool = True
    ) -> None:
        self.device = model.z_H_init.device
        if capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {self.device}")
        self.model = model
        self.segment_fn = segment_fn
        self.buckets = tuple(buckets)
        self.max_segments = max_segments
        self._lock = threading.Lock()
        if capture:
            pool = torch.cuda.graph_pool_handle()  # one pool: graphs never run concurrently; only buffers cross
            self._graphs = {bucket: self._capture(bucket, pool) for bucket in self.buckets}
        else:
            self._graphs = {bucket: self._eager(bucket) for bucket in self.buckets}

    def __call__(self, windows: Tensor, budgets: Tensor | None, use_halting: bool = True) -> ActResult:
        """windows (B, W, F) -> ActResult on the GPU; budgets (B,) int64 (None = max_segments)."""
        limits = segment_limits(budgets, windows.shape[0], self.max_segments, torch.device("cpu"))  # (B,) host
        with self._lock, torch.no_grad():
            parts = [
                self._run_chunk(windows[start:stop], limits[start:stop], bucket, use_halting)
                for start, stop, bucket in bucket_chunks(windows.shape[0], self.buckets)
            ]
        probabilities = torch.cat([part[0] for part in parts])  # (B, 3)
        quantity, q_halt, segments_used = (torch.cat([part[i] for part in parts]) for i in (1, 2, 3))
        return ActResult(probabilities, quantity, probabilities.max(dim=-1).values, segments_used, q_halt)

    # ------------------------------------------------------------------------------------------- replay

    def _run_chunk(
        self, windows: Tensor, limits: Tensor, bucket: int, use_halting: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        graphs = self._graphs[bucket]
        rows = windows.shape[0]
        graphs.windows[:rows].copy_(windows, non_blocking=True)
        graphs.windows[rows:].zero_()
        graphs.limits.copy_(padded_limits(limits, bucket), non_blocking=True)
        graphs.use_halting.fill_(use_halting)
        graphs.start.replay()
        for _ in range(int(limits.max())):  # host-side count: no sync
            graphs.segment.replay()
        # Copies: the buffers are overwritten by the next chunk or call.
        return (
            graphs.probabilities[:rows].clone(),
            graphs.quantity[:rows].clone(),
            graphs.q_halt[:rows].clone(),
            graphs.segments_used[:rows].clone(),
        )

    # ------------------------------------------------------------------------------------------ capture

    def _capture(self, bucket: int, pool: tuple[int, int]) -> _BucketGraphs:
        graphs = self._allocate(bucket)
        side_stream = torch.cuda.Stream(self.device)
        side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side_stream), torch.no_grad():
            for _ in range(WARM_UP_RUNS):
                self._start_ops(graphs)
                self._segment_ops(graphs)
        torch.cuda.current_stream(self.device).wait_stream(side_stream)
        graphs.start, graphs.segment = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.no_grad():
            with torch.cuda.graph(graphs.start, pool=pool):
                self._start_ops(graphs)
            with torch.cuda.graph(graphs.segment, pool=pool):
                self._segment_ops(graphs)
        return graphs

    def _eager(self, bucket: int) -> _BucketGraphs:
        graphs = self._allocate(bucket)
        graphs.start = _EagerReplay(lambda: self._start_ops(graphs))
        graphs.segment = _EagerReplay(lambda: self._segment_ops(graphs))
        return graphs

    def _allocate(self, bucket: int) -> _BucketGraphs:
        model, device = self.model, self.device
        dtype = model.z_H_init.dtype
        state_shape = (bucket, model.n_tokens, model.config.d_model)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return _BucketGraphs(
            windows=zeros(bucket, model.window, model.n_features, dtype=dtype),
            limits=torch.ones(bucket, dtype=torch.int64, device=device),
            use_halting=torch.ones((), dtype=torch.bool, device=device),
            counter=zeros(dtype=torch.int64),
            x=zeros(*state_shape, dtype=dtype),
            z_H=zeros(*state_shape, dtype=dtype),
            z_L=zeros(*state_shape, dtype=dtype),
            probabilities=zeros(bucket, N_ACTIONS),
            quantity=zeros(bucket),
            q_halt=zeros(bucket),
            segments_used=zeros(bucket, dtype=torch.int64),
            halted=zeros(bucket, dtype=torch.bool),
        )

    def _start_ops(self, graphs: _BucketGraphs) -> None:
        """What `act_inference`'s caller and its first lines do: embed, initial carry, zeroed outputs."""
        graphs.x.copy_(self.model.embed(graphs.windows))
        carry = self.model.initial_carry(graphs.windows.shape[0], self.device)
        graphs.z_H.copy_(carry.z_H)
        graphs.z_L.copy_(carry.z_L)
        for buffer in (graphs.counter, graphs.probabilities, graphs.quantity, graphs.q_halt, graphs.segments_used):
            buffer.zero_()
        graphs.halted.zero_()

    def _segment_ops(self, graphs: _BucketGraphs) -> None:
        """One iteration of `act_inference`'s loop, with the halting test on the device."""
        z_H, z_L, logits, quantity, q_halt, q_continue = self.segment_fn(graphs.z_H, graphs.z_L, graphs.x)
        graphs.z_H.copy_(z_H)
        graphs.z_L.copy_(z_L)
        graphs.counter.add_(1)
        running = ~graphs.halted  # (N,)
        probabilities = torch.softmax(logits.float(), dim=-1)
        graphs.probabilities.copy_(torch.where(running[:, None], probabilities, graphs.probabilities))
        graphs.quantity.copy_(torch.where(running, quantity.float(), graphs.quantity))
        graphs.q_halt.copy_(torch.where(running, q_halt.float(), graphs.q_halt))
        graphs.segments_used.copy_(torch.where(running, graphs.counter, graphs.segments_used))
        halt_now = (graphs.counter >= graphs.limits) | (graphs.use_halting & (q_halt > q_continue))
        graphs.halted.logical_or_(halt_now)
