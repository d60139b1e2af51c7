"""The replica's hrm_* Serve metrics (exported through Ray's Prometheus endpoint, tagged with deployment and
replica), recorded off the request path.

A request only appends to plain lists and counters (`prediction`); `flush()`, called by the replica's once-a-second
memory watch, hands them to Ray's metrics. Recording a Ray metric point is a call into Ray's C++ metrics with tag
merging on the way, three per prediction, and on the event loop that competes with the inference thread for the
GIL at every request; buffered, the points reach Prometheus at most one watch interval later.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000]
SEGMENT_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16]


class ServingMetrics:
    def __init__(self) -> None:
        self.latency_ms = Histogram(
            "hrm_request_latency_ms", description="server time per prediction", boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route",),
        )
        self.cache_hits = Counter("hrm_cache_hits", description="predictions answered from the cache")
        self.cache_misses = Counter("hrm_cache_misses", description="predictions computed by the engine")
        self.segments_used = Histogram(
            "hrm_segments_used", description="ACT segments per computed prediction", boundaries=SEGMENT_BOUNDARIES
        )
        self.shed_requests = Counter("hrm_shed_requests", description="requests refused with 503 (memory)")
        self.memory_bytes = Gauge("hrm_replica_memory_bytes", description="guarded memory of this replica")
        self._latencies: list[tuple[str, float]] = []  # (route, ms) since the last flush
        self._segments: list[int] = []  # of computed predictions since the last flush
        self._hits = 0

    def prediction(self, route: str, latency_ms: float, segments: int | None) -> None:
        """One answered prediction; `segments` None when the cache answered it."""
        self._latencies.append((route, latency_ms))
        if segments is None:
            self._hits += 1
        else:
            self._segments.append(segments)

    def flush(self) -> None:
        latencies, self._latencies = self._latencies, []
        segments, self._segments = self._segments, []
        hits, self._hits = self._hits, 0
        for route, latency_ms in latencies:
            self.latency_ms.observe(latency_ms, tags={"route": route})
        for count in segments:
            self.segments_used.observe(count)
        if hits:
            self.cache_hits.inc(hits)
        if segments:
            self.cache_misses.inc(len(segments))
