"""The baselines `benchmarks/serve_latency.py` measures ours against: the server a user would write in ten
minutes (uvicorn + FastAPI + pydantic + our engine) and a naive Serve deployment (eager engine, no cache,
no batching)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from hrm_platform.config import ServeConfig
from hrm_platform.serving.schemas import PredictRequest, check_bars  # module level: FastAPI resolves annotations here


def uvicorn_app(checkpoint: Path):
    """The engine behind a tiny FastAPI app: parse, validate, predict, answer. No cache, no batching."""
    from fastapi import FastAPI

    from hrm_platform.serving.engine import InferenceEngine

    engine = InferenceEngine.from_checkpoint(checkpoint, torch_threads=1)
    limits = ServeConfig()  # the same bar checks as ours, at their defaults
    api = FastAPI()

    @api.get("/health")
    async def health() -> dict:
        return {"variant": engine.variant}

    @api.post("/v1/predict")
    async def predict(request: PredictRequest) -> dict:
        bars = request.bars_array()
        check_bars(bars, engine.bars_needed, limits.max_bars, limits.max_price_ratio)
        prediction = engine.predict_bars([bars], [request.max_segments])[0]
        return {**asdict(prediction), "trade": prediction.target_position - request.position}

    return api


def run_uvicorn(checkpoint: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(uvicorn_app(checkpoint), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def naive_deployment(checkpoint: Path):
    """Serve with its defaults: eager fp32, max_ongoing_requests=5, no cache, no batching, one replica."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    @serve.ingress(api)
    class NaiveHRM:
        def __init__(self, checkpoint: str) -> None:
            from hrm_platform.serving.engine import InferenceEngine

            self.engine = InferenceEngine.from_checkpoint(checkpoint, variant="eager", torch_threads=1)

        @api.post("/v1/predict")
        def predict(self, request: dict) -> dict:
            bars = np.asarray(request["bars"], dtype=np.float64)
            prediction = self.engine.predict_bars([bars], [None])[0]
            return {**asdict(prediction), "trade": prediction.target_position - request.get("position", 0.0)}

    return NaiveHRM.bind(str(checkpoint))
