"""The Serve replica: one FastAPI ingress deployment that validates, caches, batches and infers.

Request path in a replica: the body is decoded into a typed request by msgspec (serving/lean_path.py; a body it
does not take goes to the FastAPI + pydantic route, serving/http.py, schemas.py) -> `check_bars` (count, values,
price jumps) -> cache lookup keyed on (model_version, bars, budget) -> a miss alone in the replica is computed at
once; concurrent misses go through the EngineBatcher (serving/batcher.py), which gathers them into engine calls
on a single inference thread, filled to serve.batch_fill of the replica's recent concurrency -> response. The
engine, the cache and the memory guard are the replica's; the checkpoint comes from `user_config`, so a `serve
deploy` that changes only `user_config.checkpoint` calls `reconfigure()` on the running replica: the new engine
is built beside the old one, then swapped in with one assignment. Requests in flight finish on the model they
started with, and the cache key carries the model version, so nothing the old model computed is served after
the swap. A checkpoint that fails to load never stops a replica from serving: a running one keeps its model,
and a starting one (restarted after a reload to a damaged checkpoint) serves the checkpoint the app was built
with; both report `reload_error`.

Streams (/v1/streams: serving/stream_service.py, streams.py): the replica's StreamStore keeps each stream's recent
bars, and a stream request joins the path above at the cache lookup (`decide`), so its answer is /v1/predict's.

Why one deployment rather than an ingress in front of a model deployment: a Serve handle call between two
deployments costs a hop of its own at every request, more than the model itself on a CPU replica in every
ingress mode measured (README, HTTP API). A separate model deployment pays off once the model needs
hardware the HTTP layer does not (a GPU); until then it only adds that hop.

The app around it is built by `serving/app.py`; `serving/lifecycle.py` starts, reloads and stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from ray import serve

from hrm_platform.checkpoint import MANIFEST_FILE
from hrm_platform.config import ServeConfig
from hrm_platform.serving.batcher import EngineBatcher
from hrm_platform.serving.cache import PredictionCache
from hrm_platform.serving.engine import InferenceEngine, Prediction
from hrm_platform.serving.engine_process import EngineProcess
from hrm_platform.serving.errors import overloaded
from hrm_platform.serving.http import create_api
from hrm_platform.serving.ingress import keep_replica_grpc_on_loopback
from hrm_platform.serving.memory_guard import ReplicaMemoryMonitor, connect_memory_guard
from hrm_platform.serving.metrics import ServingMetrics
from hrm_platform.serving.schemas import (
    BatchRequest,
    BatchResponse,
    HealthResponse,
    ModelSummary,
    PredictRequest,
    PredictResponse,
    check_bars,
    decision_response,
)
from hrm_platform.serving.stream_service import StreamService
from hrm_platform.serving.streams import StreamSettings, StreamStore

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "HRMDeployment"


class ReloadConfig(BaseModel):
    """The deployment's `user_config`: changing it on a running app hot-swaps the model."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str  # a directory or a URI (storage.py)




@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per load
class ServedModel:
    """An engine and what /v1/model says about it; replaced as a whole on reload. `batch_engine`: the same
    engine in a child process (serve.engine_process, CPU engines), which computes the replica's batches."""

    engine: InferenceEngine
    summary: ModelSummary
    batch_engine: EngineProcess | None = None

    def batch_predictor(self) -> InferenceEngine | EngineProcess:
        """Where a batch runs: the engine process once it is ready, else (loading, failed to load, closed by a
        reload, exited or killed for hanging: the health check then restarts the replica) this process's engine.
        Called on the inference thread only."""
        child = self.batch_engine
        return child if child is not None and child.status() == "ready" else self.engine

    @property
    def version(self) -> str:
        return self.engine.model_version


def load_served_model(checkpoint: str, serve_config: ServeConfig) -> ServedModel:
    """`checkpoint`: a directory, or a URI loaded from its verified copy in serve.checkpoint_cache_dir."""
    variant = None if serve_config.engine_variant == "auto" else serve_config.engine_variant
    engine = InferenceEngine.from_checkpoint(
        checkpoint,
        variant=variant,
        torch_threads=serve_config.torch_threads,
        graph_buckets=serve_config.cuda_graph_buckets,
        cache_dir=serve_config.checkpoint_cache_dir,
    )
    manifest = json.loads((engine.checkpoint_dir / MANIFEST_FILE).read_text())  # verified by from_checkpoint
    summary = ModelSummary(
        model_version=engine.model_version,
        variant=engine.variant,
        checkpoint=str(checkpoint),
        created_at=manifest.get("created_at"),
        git_revision=manifest.get("git_revision"),
        epoch=manifest.get("epoch"),
        bars_needed=engine.bars_needed,
        window=engine.feature_spec.window,
        max_segments=engine.max_segments,
        features=list(engine.feature_spec.names),
        metrics=manifest.get("metrics", {}).get("latest", {}),
    )
    return ServedModel(engine, summary, _start_engine_process(engine, serve_config))


def _start_engine_process(engine: InferenceEngine, serve_config: ServeConfig) -> EngineProcess | None:
    """The engine process for a CPU engine (serve.engine_process), loading in the background: until it is ready,
    and for good if it cannot load what this process did (a variant registered only here, say), batches run in
    this process. None when off or on a GPU."""
    if not serve_config.engine_process or engine.device.type != "cpu":
        return None
    return EngineProcess.spawn(  # a batch slower than a request may wait for its answer: the child hangs
        engine.checkpoint_dir, engine.variant, serve_config.torch_threads, serve_config.request_timeout_s
    )


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request, bound to the model it will be answered by."""

    model: ServedModel
    bars: np.ndarray  # (bars_needed, 5): the bars the answer depends on
    position: float
    budget: int | None
    cache_key: str


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()  # the FastAPI app is built per replica by __serve_build_asgi_app__ (it needs the config)
class HRMDeployment:
    async def __init__(self, serve_config: dict[str, Any], built_with: str | None = None) -> None:
        """`built_with`: the checkpoint the app was built with (its `args.checkpoint`), which a starting
        replica serves when the one `user_config` names fails to load."""
        keep_replica_grpc_on_loopback()
        self._serve = ServeConfig.model_validate(serve_config)
        self._built_with = built_with
        self._model: ServedModel | None = None
        self._reload_error: str | None = None
        self._cache = PredictionCache(self._serve.cache_size, self._serve.cache_ttl_s)
        self._streams = StreamStore(self._serve.max_streams, self._serve.stream_idle_s)
        self.streams = StreamService(self._streams, self._serve, self._current_model, self.decide)  # /v1/streams
        self._batcher = EngineBatcher(_predict_items, self._serve.max_batch_size, self._serve.batch_wait_timeout_s,
                                      self._serve.batch_fill, run_batch=_predict_batch)
        self._metrics = ServingMetrics()
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._guard = connect_memory_guard(
            self._serve.memory_limit_gb, self._serve.memory_soft_fraction, self._serve.memory_stale_after_s
        )
        # The deployed config owns the limit: a guard left from an earlier deploy keeps its old one otherwise.
        await self._guard.set_limit_gb.remote(self._serve.memory_limit_gb, self._serve.memory_soft_fraction)
        self._monitor = ReplicaMemoryMonitor(self._guard, self._replica_id, self._serve.memory_cleanup_cooldown_s)
        self._memory_task = asyncio.get_running_loop().create_task(self._watch_memory())

    def __serve_build_asgi_app__(self):
        return create_api(self, self._serve, auth_token=os.environ.get(self._serve.auth_token_env) or None)

    # --------------------------------------------------------------------------------- Serve lifecycle

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load `user_config["checkpoint"]` beside the current model, then swap. When it fails, a hot reload
        keeps the old model and a starting replica serves the checkpoint it was built with (`user_config` may
        name a damaged one that `serve deploy` passed unchecked); either way health reports the error. Only a
        starting replica with no good checkpoint at all fails."""
        checkpoint = ReloadConfig.model_validate(user_config).checkpoint
        if self._model is not None and self._model.summary.checkpoint == checkpoint:
            self._reload_error = None  # asked for what is already served (e.g. a rollback after a failed reload)
            return
        try:
            model = await asyncio.to_thread(load_served_model, checkpoint, self._serve)
        except Exception as error:  # noqa: BLE001 - whatever fails (hashes, format, torch) must not stop serving
            self._model = self._model or await self._load_built_with(checkpoint, error)
            self._reload_error = (
                f"reload to {checkpoint} failed, still serving {self._model.version} "
                f"from {self._model.summary.checkpoint}: {error}"
            )
            logger.error(self._reload_error)
            return
        previous, self._model, self._reload_error = self._model, model, None
        if previous is not None and previous.batch_engine is not None:
            self._batcher.after_pending(previous.batch_engine.close)  # after the batches already sent to it
        self._cache.clear()  # unreachable anyway (keys carry the model version); frees the memory now
        logger.info("serving model %s (%s) from %s; was %s", model.version, model.engine.variant, checkpoint,
                    previous.version if previous else None)

    async def _load_built_with(self, failed: str, error: Exception) -> ServedModel:
        """A starting replica's fallback: the checkpoint the app was built with; re-raises `error` when
        that is the one that failed or there is none."""
        if self._built_with is None or self._built_with == failed:
            raise error
        logger.error("cannot start on %s (%s); serving %s, the checkpoint the app was built with",
                     failed, error, self._built_with)
        return await asyncio.to_thread(load_served_model, self._built_with, self._serve)

    async def check_health(self) -> None:
        if self._model is None:
            raise RuntimeError("no model loaded")
        if self._memory_task.done():
            raise RuntimeError(f"memory watch stopped: {self._memory_task.exception()!r}")
        child = self._model.batch_engine
        if child is not None and child.status() == "exited":
            raise RuntimeError(f"the engine process exited (code {child.process.returncode})")

    async def _watch_memory(self) -> None:
        """Every memory_check_interval_s: drop idle streams, report memory to the guard and apply its directive.
        A cleanup while shedding also drops the least recently used half of the streams (their clients re-seed)."""
        while True:
            try:
                self._metrics.flush()
                self._streams.expire()
                engine = self._model.engine if self._model is not None else None
                cleanups = self._monitor.cleanups
                await self._monitor.check_async(engine, self._cache, self._engine_process_rss())
                if self._monitor.shedding and self._monitor.cleanups > cleanups:
                    self._streams.evict_oldest(len(self._streams) // 2)
                if self._monitor.last_reading is not None:
                    self._metrics.memory_bytes.set(self._monitor.last_reading.guarded_bytes)
            except Exception:  # the guard restarting must not stop the replica from reporting later
                logger.exception("memory guard report failed; retrying")
            await asyncio.sleep(self._serve.memory_check_interval_s)

    def _engine_process_rss(self) -> int:
        child = self._model.batch_engine if self._model is not None else None
        return child.rss_bytes() if child is not None else 0

    # ---------------------------------------------------------------------------------- the Service API

    async def predict(self, request: PredictRequest, started: float) -> PredictResponse:
        prepared = self._prepare(request, self._current_model())
        return await self._answer(prepared, started, route="predict")

    async def predict_batch(self, batch: BatchRequest, started: float) -> BatchResponse:
        model = self._current_model()  # one model for the whole batch
        prepared = [self._prepare(request, model, f"requests[{i}].") for i, request in enumerate(batch.requests)]
        answers = await asyncio.gather(*(self._answer(item, started, route="batch") for item in prepared))
        return BatchResponse(responses=list(answers))

    async def health(self) -> HealthResponse:
        model = self._model
        status = "loading" if model is None else ("shedding" if self._monitor.shedding else "ok")
        return HealthResponse(
            status=status,
            model_version=model.version if model else None,
            variant=model.engine.variant if model else None,
            replica=self._replica_id,
            memory=await self._memory_state(),
            cache=self._cache.stats(),
            engine_calls=self._batcher.stats.as_dict(),
            reload_error=self._reload_error,
            streams=self._streams.stats(),
            engine_process=model.batch_engine.status() if model and model.batch_engine else None,
        )

    def model_summary(self) -> ModelSummary:
        if self._model is None:
            raise overloaded("model still loading")
        return self._model.summary  # metadata: answered even while shedding

    async def decide(
        self, model: ServedModel, window: np.ndarray, position: float, settings: StreamSettings, started: float,
        route: str,
    ) -> PredictResponse:
        """A stream's decision on `window` (bars_needed, 5): the path of a checked /v1/predict from its cache key on."""
        budget = _segment_budget(settings, model.engine)
        key = self._cache.make_key(model.version, window, budget)
        return await self._answer(PreparedRequest(model, window, position, budget, key), started, route)

    # ---------------------------------------------------------------------------------------- internals

    def _current_model(self) -> ServedModel:
        """The model a prediction will use, or 503 while shedding or loading."""
        if self._monitor.shedding:
            self._metrics.shed_requests.inc()
            raise overloaded("replica over its memory limit; retry later")
        if self._model is None:
            raise overloaded("model still loading")
        return self._model

    def _prepare(self, request: PredictRequest, model: ServedModel, prefix: str = "") -> PreparedRequest:
        engine = model.engine
        bars = request.bars_array()
        check_bars(bars, engine.bars_needed, self._serve.max_bars, self._serve.max_price_ratio, field=f"{prefix}bars")
        bars = bars[-engine.bars_needed:]  # the answer depends on these only; a shorter key hits more often
        budget = _segment_budget(request, engine)
        key = self._cache.make_key(model.version, bars, budget)
        return PreparedRequest(model, bars, request.position, budget, key)

    async def _answer(self, prepared: PreparedRequest, started: float, route: str) -> PredictResponse:
        prediction = self._cache.get(prepared.cache_key)
        cached = prediction is not None
        if not cached:
            prediction = await self._batcher.submit(prepared)
            self._cache.put(prepared.cache_key, prediction)
        latency_ms = (time.perf_counter() - started) * 1e3
        self._metrics.prediction(route, latency_ms, None if cached else prediction.segments)
        return decision_response(
            prediction, position=prepared.position, cached=cached, model_version=prepared.model.version,
            latency_ms=latency_ms,
        )

    async def _memory_state(self) -> dict[str, Any]:
        reading = self._monitor.last_reading
        state: dict[str, Any] = {
            "directive": self._monitor.directive,
            "cleanups": self._monitor.cleanups,
            "rss_bytes": reading.rss_bytes if reading else None,
            "gpu_bytes": reading.gpu_bytes if reading else None,
        }
        try:
            snapshot = await asyncio.wait_for(self._guard.snapshot.remote(), timeout=self._serve.guard_timeout_s)
            state.update(limit_bytes=snapshot["limit_bytes"], soft_bytes=snapshot["soft_bytes"])
        except Exception as error:  # health must answer even when the guard does not
            state["guard_error"] = f"{type(error).__name__}: {error}"
        return state


def _segment_budget(request: PredictRequest | StreamSettings, engine: InferenceEngine) -> int | None:
    """The tighter of max_segments and what deadline_ms affords; None = the model's maximum (ACT clamps)."""
    budgets = []
    if request.max_segments is not None:
        budgets.append(request.max_segments)
    if request.deadline_ms is not None:
        budgets.append(engine.segments_for_deadline(request.deadline_ms))
    return min(budgets) if budgets else None


def _predict_items(items: list[PreparedRequest], in_batch: bool = False) -> list[Prediction]:
    """Cache misses -> one engine call per model (two only while a reload swaps models), answers in order; a
    batch (`in_batch`) on each model's batch predictor, a lone miss on the engine in this process."""
    results: list[Prediction | None] = [None] * len(items)
    for model, indices in _group_by_model(items).items():
        predictor = model.batch_predictor() if in_batch else model.engine
        predictions = predictor.predict_bars([items[i].bars for i in indices], [items[i].budget for i in indices])
        for index, prediction in zip(indices, predictions):
            results[index] = prediction
    return results  # type: ignore[return-value]


def _predict_batch(items: list[PreparedRequest]) -> list[Prediction]:
    return _predict_items(items, in_batch=True)


def _group_by_model(items: list[PreparedRequest]) -> dict[ServedModel, list[int]]:
    groups: dict[ServedModel, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.model, []).append(index)
    return groups
