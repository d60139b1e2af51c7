"""Engine timings wait for the device: a CUDA call returns when its kernels are queued, not done.

A fake device queue stands in for the GPU: each call queues 20 ms of "kernels" and returns at once;
`torch.cuda.synchronize` is where that time is spent. A timing that does not synchronise reads ~0 ms.
"""

from __future__ import annotations

import time

import pytest
import torch

from hrm_platform.serving import engine as engine_module


class FakeDeviceQueue:
    def __init__(self) -> None:
        self.pending_s = 0.0
        self.syncs = 0

    def launch(self) -> None:
        self.pending_s += 0.02

    def synchronize(self, device=None) -> None:
        self.syncs += 1
        time.sleep(self.pending_s)
        self.pending_s = 0.0


@pytest.fixture
def queue(monkeypatch):
    fake = FakeDeviceQueue()
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    return fake


def test_median_ms_counts_the_queued_device_work(queue):
    median = engine_module._median_ms(queue.launch, repeats=3, device=torch.device("cuda"))
    assert median >= 19.0
    assert queue.syncs == 6  # before (an idle device) and after each call


def test_cpu_timings_do_not_touch_cuda(queue):
    engine_module._median_ms(lambda: None, repeats=3, device=torch.device("cpu"))
    assert queue.syncs == 0


def test_export_latency_synchronises_each_engine(queue):
    """round_robin_medians times engine.run of every engine with the same rule."""
    from hrm_platform.serving.export_checks import round_robin_medians

    class QueuedEngine:
        device = torch.device("cuda")
        max_segments = 2

        def run(self, windows, budgets, use_halting=True):
            queue.launch()

    medians = round_robin_medians({"eager": QueuedEngine()}, torch.zeros(1, 4, 3), repeats=3)
    assert medians["eager"] >= 19.0
