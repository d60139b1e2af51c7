"""serving/engine_process.py: the engine in a child process answers as the engine in this one, reports its
errors and its exit, and goes away when closed; the replica's memory reading counts it."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from hrm_platform.config import ServeConfig
from hrm_platform.serving.engine import InferenceEngine, synthetic_bars
from hrm_platform.serving.engine_process import EngineProcess, EngineProcessError
from hrm_platform.serving.memory_guard import MemoryReader, ReplicaMemoryMonitor
from hrm_platform.serving.replica import ServedModel, _predict_items, load_served_model


@pytest.fixture(scope="module")
def engine(trained_checkpoint) -> InferenceEngine:
    return InferenceEngine.from_checkpoint(trained_checkpoint, variant="eager", torch_threads=1)


@pytest.fixture(scope="module")
def child(engine):
    process = EngineProcess.start(engine.checkpoint_dir, engine.variant, torch_threads=1)
    yield process
    process.close()


def test_the_child_answers_a_batch_exactly_as_this_process(engine, child):
    bars = [synthetic_bars(engine.bars_needed + extra, seed=seed) for seed, extra in enumerate((0, 3, 9, 20))]
    budgets = [None, 1, 2, None]
    assert child.predict_bars(bars, budgets) == engine.predict_bars(bars, budgets)


def test_a_failing_request_raises_its_reason_and_the_child_keeps_serving(engine, child):
    with pytest.raises(EngineProcessError, match="request 0: need at least"):
        child.predict_bars([synthetic_bars(5)], [None])
    assert child.alive
    bars = [synthetic_bars(engine.bars_needed)]
    assert child.predict_bars(bars, [None]) == engine.predict_bars(bars, [None])


def test_close_ends_the_child_and_a_lost_child_is_reported(engine):
    closed = EngineProcess.start(engine.checkpoint_dir, engine.variant, torch_threads=1)
    closed.close()
    assert closed.closed and not closed.alive and closed.process.returncode == 0

    loading = EngineProcess.spawn(engine.checkpoint_dir, engine.variant, torch_threads=1)
    started = time.monotonic()
    loading.close()  # a reload closing a child that has not loaded yet: killed, not waited for
    assert not loading.alive and time.monotonic() - started < 3.0

    lost = EngineProcess.start(engine.checkpoint_dir, engine.variant, torch_threads=1)
    lost.process.kill()
    lost.process.wait()
    with pytest.raises(EngineProcessError, match="exited|gone"):
        lost.predict_bars([synthetic_bars(engine.bars_needed)], [None])
    assert not lost.alive and not lost.closed
    lost.close()


def test_a_child_that_hangs_is_killed_after_the_reply_timeout_and_batches_come_back_to_this_process(engine):
    hung = EngineProcess.start(engine.checkpoint_dir, engine.variant, torch_threads=1, reply_timeout_s=0.5)
    served = ServedModel(engine, summary=None, batch_engine=hung)
    try:
        assert served.batch_predictor() is hung
        os.kill(hung.process.pid, signal.SIGSTOP)  # alive, but it neither answers nor exits
        started = time.monotonic()
        with pytest.raises(EngineProcessError, match="no answer in 0.5 s; killed it"):
            hung.predict_bars([synthetic_bars(engine.bars_needed)], [None])
        assert 0.5 <= time.monotonic() - started < 10
        assert not hung.alive and hung.status() == "exited"  # the replica's health check fails on this
        assert served.batch_predictor() is engine
    finally:
        hung.close()


def test_a_child_that_cannot_load_says_why_and_batches_stay_in_this_process(trained_checkpoint, engine):
    with pytest.raises(EngineProcessError, match="could not load .*unknown engine variant 'nope'"):
        EngineProcess.start(trained_checkpoint, "nope", torch_threads=1)
    failed = EngineProcess.spawn(trained_checkpoint, "nope", torch_threads=1)
    try:
        assert not failed.wait_ready(120) and failed.state == "failed" and "nope" in failed.error
        served = ServedModel(engine, summary=None, batch_engine=failed)
        assert served.batch_predictor() is engine
    finally:
        failed.close()


def test_a_served_cpu_model_computes_batches_in_its_process_and_lone_misses_here(trained_checkpoint):
    served = load_served_model(str(trained_checkpoint), ServeConfig(engine_variant="eager", engine_process=True))
    try:
        assert served.batch_engine is not None and served.batch_engine.alive
        if not served.batch_engine.ready():
            assert served.batch_predictor() is served.engine  # still loading: batches run here meanwhile
        assert served.batch_engine.wait_ready(120)
        assert served.batch_predictor() is served.batch_engine
        served.batch_engine.close()
        assert served.batch_predictor() is served.engine  # after a reload closed it: batches run here
    finally:
        served.batch_engine.close()
    assert load_served_model(str(trained_checkpoint), ServeConfig()).batch_engine is None  # off by default


def test_the_replica_sends_batches_to_the_child_and_lone_misses_to_its_own_engine(trained_checkpoint, monkeypatch):
    served = load_served_model(str(trained_checkpoint), ServeConfig(engine_variant="eager", engine_process=True))
    assert served.batch_engine.wait_ready(120)
    calls = []
    monkeypatch.setattr(served.engine, "predict_bars", lambda bars, budgets: calls.append("here") or [None] * len(bars))
    monkeypatch.setattr(served.batch_engine, "predict_bars",
                        lambda bars, budgets: calls.append("child") or [None] * len(bars))
    item = type("Item", (), {"model": served, "bars": None, "budget": None})()
    try:
        _predict_items([item])
        _predict_items([item, item], in_batch=True)
        assert calls == ["here", "child"]
    finally:
        served.batch_engine.close()


def test_the_memory_guard_counts_the_engine_process_in_the_replicas_rss():
    class Guard:  # the MemoryGuard actor's report(), as an awaitable remote call
        def __init__(self) -> None:
            self.reports: list[int] = []
            self.report = self

        def remote(self, replica_id: str, rss_bytes: int, gpu_bytes: int | None):
            self.reports.append(rss_bytes)
            future = asyncio.get_running_loop().create_future()
            future.set_result("ok")
            return future

    guard = Guard()
    monitor = ReplicaMemoryMonitor(guard, "replica", cleanup_cooldown_s=10.0, reader=MemoryReader())
    asyncio.run(monitor.check_async(child_rss_bytes=0))
    asyncio.run(monitor.check_async(child_rss_bytes=300 * 2**20))
    assert guard.reports[1] - guard.reports[0] > 250 * 2**20  # this process's RSS moved far less in between
    assert monitor.last_reading.rss_bytes == guard.reports[1]
