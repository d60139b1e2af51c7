"""Fixtures of the serving integration tests: a client of the session's app, its bare engine, real bars."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS


@pytest.fixture(scope="module")
def client(serve_app):
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def engine(serve_app):
    from hrm_platform.serving.engine import InferenceEngine

    return InferenceEngine.from_checkpoint(serve_app.checkpoint)


@pytest.fixture(scope="module")
def market_bars(engine) -> list[np.ndarray]:
    """Real synthetic-market bars: 40 distinct requests of bars_needed + 8 bars each, (N, 5) float64."""
    frame = generate_market(1, 600, seed=5, horizon=4).bars["SYN00"]
    values = frame[list(BAR_COLUMNS)].to_numpy()
    length = engine.bars_needed + 8
    return [values[start : start + length] for start in range(0, 40 * 10, 10)]
