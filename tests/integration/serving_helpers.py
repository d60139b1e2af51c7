"""Shared by the serving integration tests: requests to the session's app and the engine-equality check."""

from __future__ import annotations

import httpx
import numpy as np
import pytest


def predict(client: httpx.Client, bars: np.ndarray, **fields) -> httpx.Response:
    return client.post("/v1/predict", json={"bars": bars.tolist(), **fields})


def health(client: httpx.Client) -> dict:
    response = client.get("/v1/health")
    assert response.status_code == 200
    return response.json()


def assert_same_decision(answer: dict, prediction, position: float = 0.0, tolerance: float = 1e-5) -> None:
    assert answer["action"] == prediction.action
    assert answer["segments"] == prediction.segments
    assert answer["quantity"] == pytest.approx(prediction.quantity, abs=tolerance)
    assert answer["confidence"] == pytest.approx(prediction.confidence, abs=tolerance)
    for name, probability in prediction.probabilities.items():
        assert answer["probabilities"][name] == pytest.approx(probability, abs=tolerance)
    assert answer["target_position"] == pytest.approx(prediction.target_position, abs=tolerance)
    assert answer["trade"] == pytest.approx(prediction.target_position - position, abs=tolerance)
