"""Hot reload under load (nothing fails, nothing stale), a broken checkpoint keeps the old model, and the
memory guard's cleanup -> 503 -> recovery, over real HTTP on local Ray."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.serving_helpers import assert_same_decision, health, predict

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def second_checkpoint(smoke_config_module, tmp_path_factory) -> Path:
    from hrm_platform.training.local import train_local

    smoke_config_module.train.seed = 1
    return train_local(smoke_config_module, tmp_path_factory.mktemp("second"))


@pytest.fixture(scope="module")
def smoke_config_module():
    from hrm_platform.config import load_config

    return load_config(REPO_ROOT / "jobs" / "configs" / "smoke.yaml")


class LoadRecorder:
    """Threads sending requests until stopped; each record: (sent, received, status, version, cached, payload)."""

    def __init__(self, url: str, headers: dict[str, str], payloads: list[list], threads: int = 6) -> None:
        self.records: list[tuple[float, float, int, str | None, bool | None, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(url, headers, payloads, seed)) for seed in range(threads)
        ]

    def _run(self, url: str, headers: dict[str, str], payloads: list[list], seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as http:
            while not self._stop.is_set():
                index = int(rng.integers(len(payloads)))
                sent = time.monotonic()
                try:
                    response = http.post("/v1/predict", json={"bars": payloads[index]})
                    status, body = response.status_code, response.json()
                except httpx.HTTPError:
                    status, body = -1, {}
                with self._lock:
                    self.records.append(
                        (sent, time.monotonic(), status, body.get("model_version"), body.get("cached"), index)
                    )

    def __enter__(self) -> LoadRecorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _wait_for_version(client: httpx.Client, version: str, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/v1/model").json()["model_version"] == version:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"model {version} not served after {timeout_s} s")


def test_reload_under_load_fails_nothing_and_serves_nothing_stale(
    client, serve_app, engine, market_bars, second_checkpoint
):
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.lifecycle import reload_checkpoint

    new_engine = InferenceEngine.from_checkpoint(second_checkpoint)
    old_version, new_version = engine.model_version, new_engine.model_version
    assert old_version != new_version
    payloads = [bars.tolist() for bars in market_bars[:6]]  # few distinct bars: most answers come from the cache
    try:
        with LoadRecorder(serve_app.url, serve_app.headers, payloads) as load:
            time.sleep(1.0)
            reload_checkpoint(second_checkpoint)
            swapped_at = _wait_for_version(client, new_version)
            time.sleep(1.5)
        records = load.records
        assert len(records) > 50
        assert [r for r in records if r[2] != 200] == []  # no failed request during the swap
        assert {r[3] for r in records} == {old_version, new_version}
        first_new = min(r[1] for r in records if r[3] == new_version)
        stale = [r for r in records if r[0] > max(first_new, swapped_at) and r[3] != new_version]
        assert stale == []
        # After the swap every payload's answer is the new model's own, never the old model's cached one.
        for index, bars in enumerate(market_bars[:6]):
            answer = predict(client, bars).json()
            assert answer["model_version"] == new_version
            assert_same_decision(answer, new_engine.predict_bars([bars], [None])[0])
        assert health(client)["reload_error"] is None
    finally:
        reload_checkpoint(serve_app.checkpoint)
        _wait_for_version(client, old_version)


def test_reload_to_a_broken_checkpoint_keeps_the_old_model(client, serve_app, engine, market_bars, tmp_path):
    from hrm_platform.checkpoint import CheckpointError
    from hrm_platform.serving.lifecycle import reload_checkpoint

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in serve_app.checkpoint.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    weights = bytearray((broken / "model.pt").read_bytes())
    weights[-100] ^= 0xFF  # one flipped byte: the sha256 in the manifest no longer matches
    (broken / "model.pt").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="model.pt"):
        reload_checkpoint(broken)  # refused before the deployment's config changes
    try:
        reload_checkpoint(broken, verify=False)  # as `serve deploy` would: the replica must refuse it itself
        deadline = time.monotonic() + 30
        while health(client)["reload_error"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        state = health(client)
        assert "model.pt" in state["reload_error"]
        assert state["model_version"] == engine.model_version
        assert predict(client, market_bars[5]).json()["model_version"] == engine.model_version
    finally:
        reload_checkpoint(serve_app.checkpoint)  # a rollback to what is served: nothing to load, error cleared
    deadline = time.monotonic() + 30
    while health(client)["reload_error"] is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(client)["reload_error"] is None




def _wait_for_memory(client: httpx.Client, condition, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = health(client)
        if condition(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"memory state never matched; last: {state['status']} {state['memory']}")


def test_memory_guard_cleans_up_then_sheds_then_recovers(client, serve_app, market_bars):
    import ray

    from hrm_platform.serving.memory_guard import GIB, GUARD_NAME, GUARD_NAMESPACE

    guard = ray.get_actor(GUARD_NAME, namespace=GUARD_NAMESPACE)
    soft_fraction = serve_app.serve_config.memory_soft_fraction
    assert predict(client, market_bars[6]).status_code == 200
    state = health(client)
    assert state["cache"]["size"] >= 1
    rss = state["memory"]["rss_bytes"]
    try:
        # Soft threshold below current use, hard limit above it: clean up (cache emptied), keep serving.
        ray.get(guard.set_limit_gb.remote(rss * 1.1 / GIB, soft_fraction))
        state = _wait_for_memory(client, lambda s: s["memory"]["cleanups"] >= 1)
        assert state["cache"]["size"] == 0
        assert predict(client, market_bars[7]).status_code == 200

        # Hard limit below current use: shed with 503 + Retry-After.
        ray.get(guard.set_limit_gb.remote(rss * 0.5 / GIB, soft_fraction))
        state = _wait_for_memory(client, lambda s: s["status"] == "shedding")
        shed = predict(client, market_bars[7])
        assert shed.status_code == 503
        assert shed.json()["error"] == "overloaded"
        assert int(shed.headers["Retry-After"]) >= 1
        batch = client.post("/v1/predict/batch", json={"requests": [{"bars": market_bars[7].tolist()}]})
        assert batch.status_code == 503

        # Limit raised again: served.
        ray.get(guard.set_limit_gb.remote(serve_app.serve_config.memory_limit_gb, soft_fraction))
        _wait_for_memory(client, lambda s: s["status"] == "ok")
        assert predict(client, market_bars[7]).status_code == 200
    finally:
        ray.get(guard.set_limit_gb.remote(serve_app.serve_config.memory_limit_gb, soft_fraction))


def test_reload_by_uri_serves_the_verified_copy(client, serve_app, engine, market_bars, tmp_path):
    """Cluster storage: the replicas fetch a checkpoint named by URI (file:// here; s3:// and gs:// go through
    the same pyarrow filesystem layer) into their cache, verify it, and serve it under that URI."""
    import shutil

    from hrm_platform.serving.lifecycle import reload_checkpoint

    uri = Path(shutil.copytree(serve_app.checkpoint, tmp_path / "stored")).as_uri()
    try:
        reload_checkpoint(uri)
        deadline = time.monotonic() + 60
        while client.get("/v1/model").json()["checkpoint"] != uri:
            assert time.monotonic() < deadline, "the URI was not served after 60 s"
            time.sleep(0.1)
        answer = predict(client, market_bars[3]).json()
        assert answer["model_version"] == engine.model_version
        assert_same_decision(answer, engine.predict_bars([market_bars[3]], [None])[0])
        assert health(client)["reload_error"] is None
    finally:
        reload_checkpoint(serve_app.checkpoint)
        deadline = time.monotonic() + 60  # same model version: wait for the path itself
        while client.get("/v1/model").json()["checkpoint"] != str(serve_app.checkpoint):
            assert time.monotonic() < deadline, "the session checkpoint was not served again after 60 s"
            time.sleep(0.1)
