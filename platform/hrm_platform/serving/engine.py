"""Inference engine: a verified checkpoint, one engine variant, ACT inference with per-request budgets.

    # the variant `hrm export` chose for this checkpoint
    engine = InferenceEngine.from_checkpoint("artifacts/demo/report/runs/demo-fold2/epoch_0003")
    engine.predict_bars([bars], budgets=[None])  # bars (N >= bars_needed, 5) OHLCV
    engine.segments_for_deadline(5.0)            # budget that fits in 5 ms

No Ray here: Serve replicas, benchmarks and tests use the same object. Requests carry raw bars; the engine
builds the model's window with the checkpoint's `FeatureSpec` (the code and statistics training used), runs
`act_inference` with the variant's segment function (the cuda_graph variants: their captured ACT loop,
`serving/cuda_graph.py`), and each sample stops at its own ACT halting decision
or at its budget: `max_segments`, or a deadline turned into segments from the per-segment time the engine
measured when it loaded (`segment_ms`, `fixed_ms`).

Loading is quick by design: `hrm export` builds, measures and checks the variants once and writes
`<checkpoint>/serving/serving_manifest.json` with the chosen one and its artefacts (sha256-listed). A replica
verifies the checkpoint and those hashes, loads the artefact and warms up; nothing is compiled at start.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hrm_platform.actions import ACTIONS, target_positions
from hrm_platform.checkpoint import CheckpointError, load_model
from hrm_platform.config import ServeConfig
from hrm_platform.data.features import FeatureSpec, recent_bars, windows_from_bars
from hrm_platform.model.act import ActResult, act_inference
from hrm_platform.model.hrm import HRM
from hrm_platform.serving.manifest import ManifestError, exported_choice, read_serving_manifest, verified_artefacts
from hrm_platform.serving.variants import VariantError, build_act_runner, engine_model, load_segment, variant_info
from hrm_platform.storage import DEFAULT_CACHE_DIR, local_checkpoint

logger = logging.getLogger(__name__)

MIN_SEGMENT_MS = 1e-3  # floor of a measured segment time (noise can make a difference of medians negative)
DEFAULT_GRAPH_BUCKETS: tuple[int, ...] = ServeConfig.model_fields["cuda_graph_buckets"].default


class EngineError(RuntimeError):
    """An engine that cannot be built as asked; the message names the checkpoint, variant and cause."""


@dataclass(frozen=True)
class Prediction:
    """One decision, whatever the caller holds: `target_position` = direction * quantity (hold = flat), as in
    the backtest. The trade from a caller's position is the HTTP layer's (`schemas.decision_response`), so
    one cached decision serves every position."""

    action: str
    quantity: float
    confidence: float
    probabilities: dict[str, float]
    segments: int
    target_position: float = 0.0


@dataclass(frozen=True)
class LatencyModel:
    """Batch-1 request time ~ fixed_ms + segments * segment_ms (features, embedding, ACT loop)."""

    segment_ms: float
    fixed_ms: float


@dataclass(eq=False)
class InferenceEngine:
    """ACT inference of one checkpoint through one variant's segment function. Build with `from_checkpoint`."""

    model: HRM  # embedding and initial carry, on `device` in the variant's dtype
    segment_fn: Any  # (z_H, z_L, x) -> (z_H, z_L, logits, quantity, q_halt, q_continue)
    variant: str
    model_version: str
    feature_spec: FeatureSpec
    checkpoint_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    act_runner: Any = None  # graph variants: (windows, budgets, use_halting) -> ActResult, replaces act_inference
    latency: LatencyModel | None = None
    load_seconds: float = 0.0

    # ------------------------------------------------------------------------------------------- building

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        variant: str | None = None,
        torch_threads: int = 1,
        device: str | torch.device | None = None,
        graph_buckets: tuple[int, ...] = DEFAULT_GRAPH_BUCKETS,
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
    ) -> InferenceEngine:
        """Verify and load a checkpoint and the variant export produced for it.

        `path`: a checkpoint directory, or a URI (s3://, gs://, file://...) whose verified local copy in
        `cache_dir` (serve.checkpoint_cache_dir) is loaded (storage.py); `checkpoint_dir` is then that copy.

        variant None: what `hrm export` chose (eager when never exported, or when the export belongs to
        another model version or torch build: logged). A named variant that cannot load raises EngineError.
        `torch_threads` sets torch's intra-op threads for this process (a replica owns its process).
        `graph_buckets`: the batch sizes a cuda_graph variant captures (serve.cuda_graph_buckets).
        """
        started = time.perf_counter()
        torch.set_num_threads(torch_threads)
        try:
            checkpoint_dir = local_checkpoint(path, cache_dir)  # a plain path as given
            hrm, loaded = load_model(checkpoint_dir)
        except (CheckpointError, ValueError) as error:
            raise EngineError(f"cannot load checkpoint {path}: {error}") from error
        try:
            serving = read_serving_manifest(checkpoint_dir, loaded.model_version)
            name = variant if variant is not None else exported_choice(serving, checkpoint_dir)
            target = torch.device(device) if device is not None else variant_info(name).default_device
            engine = cls._build(
                hrm, loaded.model_version, loaded.feature_spec, checkpoint_dir, name, target, serving, graph_buckets
            )
        except (VariantError, ManifestError, EngineError) as error:
            if variant is not None:
                raise EngineError(f"checkpoint {checkpoint_dir}: engine variant {variant!r}: {error}") from error
            # The checkpoint itself verified: serve it plainly rather than not at all.
            logger.warning("the exported engine does not load here (%s); serving eager fp32", error)
            engine = cls._build(
                hrm, loaded.model_version, loaded.feature_spec, checkpoint_dir, "eager", torch.device("cpu"), None, ()
            )
        engine.warm_up()
        engine.load_seconds = time.perf_counter() - started
        return engine

    @classmethod
    def _build(
        cls,
        hrm: HRM,
        model_version: str,
        feature_spec: FeatureSpec,
        checkpoint_dir: Path,
        variant: str,
        device: torch.device,
        serving: dict[str, Any] | None,
        graph_buckets: tuple[int, ...],
    ) -> InferenceEngine:
        artefact_dir = verified_artefacts(checkpoint_dir, serving, variant) if variant_info(variant).artefacts else None
        model = engine_model(hrm, variant, device)
        example = example_segment_inputs(model, batch_size=2)
        segment_fn = load_segment(model, variant, artefact_dir, example)
        runner = build_act_runner(model, variant, segment_fn, graph_buckets)
        return cls(model, segment_fn, variant, model_version, feature_spec, checkpoint_dir, device, runner)

    # ------------------------------------------------------------------------------------------ properties

    @property
    def bars_needed(self) -> int:
        return self.feature_spec.bars_needed

    @property
    def max_segments(self) -> int:
        return self.model.config.max_segments

    @property
    def segment_ms(self) -> float:
        return self.latency.segment_ms if self.latency else float("nan")

    # ------------------------------------------------------------------------------------------ inference

    def run(self, windows: Tensor, budgets: Tensor | None = None, use_halting: bool = True) -> ActResult:
        """windows (B, W, F) normalised -> ActResult; budgets (B,) int64 segments (None = max_segments)."""
        windows = windows.to(self.device, self.model.z_H_init.dtype)
        if self.act_runner is not None:
            return self.act_runner(windows, budgets, use_halting)
        with torch.no_grad():
            x = self.model.embed(windows)  # (B, W+1, D)
            carry = self.model.initial_carry(windows.shape[0], self.device)
            return act_inference(self.segment_fn, x, carry, budgets, self.max_segments, use_halting)

    def predict_windows(
        self,
        windows: np.ndarray | Tensor,
        budgets: Sequence[int | None] | None = None,
    ) -> list[Prediction]:
        """windows (B, W, F) normalised features -> one Prediction per window."""
        windows = torch.as_tensor(np.asarray(windows, dtype=np.float32)) if not isinstance(windows, Tensor) else windows
        result = self.run(windows, self._budget_tensor(budgets, windows.shape[0]))
        return self._predictions(result)

    def predict_bars(
        self,
        bars: Sequence[np.ndarray],
        budgets: Sequence[int | None] | None = None,
    ) -> list[Prediction]:
        """Raw bars per request, each (N >= bars_needed, 5) open/high/low/close/volume -> Predictions.

        Raises ValueError (message names the request) for a wrong shape or too few bars; values are
        validated by the caller (data.ohlcv.find_bar_problem), as the HTTP layer does.
        """
        recent = np.stack([self._recent_bars(request_bars, i) for i, request_bars in enumerate(bars)])
        return self.predict_windows(windows_from_bars(recent, self.feature_spec), budgets)  # (B, W, F) windows

    def segments_for_deadline(self, deadline_ms: float) -> int:
        """Most segments whose measured batch-1 time fits in deadline_ms (at least 1, at most max_segments)."""
        if deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        if self.latency is None:
            return self.max_segments
        affordable = int((deadline_ms - self.latency.fixed_ms) // self.latency.segment_ms)
        return max(1, min(self.max_segments, affordable))

    # ------------------------------------------------------------------------------------------- warm-up

    def warm_up(self, repeats: int = 7) -> LatencyModel:
        """Run the request path (first calls of traced/compiled code are slow) and measure segment_ms and
        fixed_ms at batch 1 for `segments_for_deadline`. Every timing waits for the device to finish."""
        bars = synthetic_bars(self.bars_needed)
        for _ in range(3):
            self.predict_bars([bars], [self.max_segments])
        segment_ms = self._segment_ms(bars, repeats)
        one_segment_ms = _median_ms(lambda: self.predict_bars([bars], [1]), repeats, self.device)
        self.latency = LatencyModel(segment_ms=segment_ms, fixed_ms=max(0.0, one_segment_ms - segment_ms))
        return self.latency

    def _segment_ms(self, bars: np.ndarray, repeats: int) -> float:
        """One more segment at batch 1: the segment function alone, or, for a captured ACT loop, the
        difference between M and 1 segments (a replay per segment) spread over M - 1."""
        if self.act_runner is None:
            example = example_segment_inputs(self.model, batch_size=1)
            return _median_ms(lambda: self.segment_fn(*example), repeats, self.device)
        window = torch.as_tensor(self._window(bars, 0))[None]  # (1, W, F)

        def run_ms(segments: int) -> float:
            budget = torch.tensor([segments])
            return _median_ms(lambda: self.run(window, budget, use_halting=False), repeats, self.device)

        one = run_ms(1)
        if self.max_segments == 1:
            return one
        return max(run_ms(self.max_segments) - one, MIN_SEGMENT_MS) / (self.max_segments - 1)

    # ------------------------------------------------------------------------------------------- helpers

    def _recent_bars(self, request_bars: np.ndarray, index: int) -> np.ndarray:
        try:
            return recent_bars(request_bars, self.feature_spec)  # (bars_needed, 5)
        except ValueError as error:
            raise ValueError(f"request {index}: {error}") from None

    def _budget_tensor(self, budgets: Sequence[int | None] | None, batch_size: int) -> Tensor:
        if budgets is None:
            budgets = [None] * batch_size
        if len(budgets) != batch_size:
            raise ValueError(f"got {len(budgets)} budgets for {batch_size} requests")
        values = []
        for index, budget in enumerate(budgets):
            if budget is not None and (isinstance(budget, bool) or int(budget) != budget or budget < 1):
                raise ValueError(f"request {index}: max_segments must be an integer >= 1, got {budget!r}")
            values.append(self.max_segments if budget is None else int(budget))
        return torch.tensor(values, dtype=torch.int64)  # (B,); clamped to 1..M by ACT (segment_limits), only there

    def _predictions(self, result: ActResult) -> list[Prediction]:
        probabilities = result.probabilities.float().cpu().numpy()  # (B, 3)
        quantity = result.quantity.float().cpu().numpy()
        confidence = result.confidence.float().cpu().numpy()
        segments = result.segments_used.cpu().numpy()
        targets = target_positions(probabilities.argmax(axis=1), quantity)  # (B,)
        predictions = []
        for row in range(probabilities.shape[0]):
            predictions.append(
                Prediction(
                    action=ACTIONS[int(probabilities[row].argmax())],
                    quantity=float(quantity[row]),
                    confidence=float(confidence[row]),
                    probabilities={name: float(p) for name, p in zip(ACTIONS, probabilities[row])},
                    segments=int(segments[row]),
                    target_position=float(targets[row]),
                )
            )
        return predictions


# ------------------------------------------------------------------------------------------------ helpers


def example_segment_inputs(model: HRM, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(z_H, z_L, x) of the engine's shapes, device and dtype: for tracing, exporting and warm-up."""
    device = model.z_H_init.device
    windows = torch.zeros(batch_size, model.window, model.n_features, device=device, dtype=model.z_H_init.dtype)
    with torch.no_grad():
        x = model.embed(windows)  # (B, W+1, D)
    carry = model.initial_carry(batch_size, device)
    return carry.z_H, carry.z_L, x


def synthetic_bars(n_bars: int, seed: int = 0) -> np.ndarray:
    """(n_bars, 5) plausible OHLCV (a random walk) for warm-up and timing; never used for decisions."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, n_bars)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    spread = np.abs(rng.normal(0.0, 0.001, n_bars)) * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    volume = rng.uniform(1e3, 1e4, n_bars)
    return np.stack([open_, high, low, close, volume], axis=1)


def _median_ms(call: Any, repeats: int, device: torch.device) -> float:
    """Median wall ms of call(), each timed from an idle device to the end of the device's work (a CUDA
    call returns when its kernels are queued, not done)."""
    timings = []
    with torch.no_grad():
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            call()
            synchronize(device)
            timings.append((time.perf_counter() - started) * 1e3)
    return statistics.median(timings)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m hrm_platform.serving.engine CHECKPOINT --variant V`: load like a replica, print the figures
    (export runs this in a fresh process to time a replica's start)."""
    import argparse

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    engine = InferenceEngine.from_checkpoint(args.checkpoint, variant=args.variant, torch_threads=args.threads)
    print(json.dumps({"variant": engine.variant, "load_seconds": engine.load_seconds, "segment_ms": engine.segment_ms}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
