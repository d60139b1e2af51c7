"""ServingMetrics: a prediction is buffered, and flush() hands every point to Ray's metrics, once."""

from __future__ import annotations

from hrm_platform.serving.metrics import ServingMetrics


class FakeMetric:
    def __init__(self) -> None:
        self.points: list[tuple[float, dict | None]] = []

    def observe(self, value: float, tags: dict | None = None) -> None:
        self.points.append((value, tags))

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.points.append((value, tags))


def test_predictions_reach_the_metrics_at_flush_and_only_once():
    metrics = ServingMetrics()
    for name in ("latency_ms", "segments_used", "cache_hits", "cache_misses"):
        setattr(metrics, name, FakeMetric())
    metrics.prediction("predict", 1.5, segments=3)
    metrics.prediction("batch", 0.4, segments=None)  # a cache hit
    metrics.prediction("stream", 2.5, segments=1)
    assert metrics.latency_ms.points == []  # nothing recorded on the request path
    metrics.flush()
    assert metrics.latency_ms.points == [(1.5, {"route": "predict"}), (0.4, {"route": "batch"}),
                                         (2.5, {"route": "stream"})]
    assert metrics.segments_used.points == [(3, None), (1, None)]
    assert metrics.cache_hits.points == [(1, None)] and metrics.cache_misses.points == [(2, None)]
    metrics.flush()  # nothing new: nothing recorded twice
    assert len(metrics.latency_ms.points) == 3 and len(metrics.cache_misses.points) == 1
