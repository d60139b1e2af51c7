"""Both ingress modes, each on its own loopback Ray cluster in a subprocess (Serve reads the mode once, when it
starts): the default (HAProxy + throughput-optimised data plane) and serve.fast_ingress=false (Serve's Python
proxy). Each serves the bare engine's answer, and no process of its cluster listens beyond loopback: the
check `ss -ltn` makes, restricted to the cluster's processes so that other servers on the machine do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import httpx, ray
    from hrm_platform.config import ServeConfig
    from hrm_platform.local_ray import init_local_ray
    from hrm_platform.serving.lifecycle import start_server
    from hrm_platform.serving.engine import InferenceEngine, synthetic_bars
    from hrm_platform.serving.ingress import free_port
    from tests.reliability.harness import listening_sockets

    checkpoint, fast_ingress = sys.argv[1], sys.argv[2] == "fast"
    config = ServeConfig(port=free_port(), fast_ingress=fast_ingress, cache_size=0)
    init_local_ray(num_cpus=2, log_to_driver=False)
    try:
        url = start_server(checkpoint, config)
        bars = synthetic_bars(InferenceEngine.from_checkpoint(checkpoint).bars_needed + 5, seed=3)
        answer = httpx.post(url + "/v1/predict", json={"bars": bars.tolist()}, timeout=30).json()
        expected = InferenceEngine.from_checkpoint(checkpoint).predict_bars([bars])[0]
        sockets = [vars(item) | {"loopback": item.loopback} for item in listening_sockets(os.getpid())]
        print(json.dumps({"url": url, "answer": answer, "expected": expected.probabilities, "sockets": sockets}))
    finally:
        ray.shutdown()
    """
)


def _serve_in_subprocess(checkpoint, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint), mode], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_default_config_uses_fast_ingress() -> None:
    from hrm_platform.config import ServeConfig

    assert ServeConfig().fast_ingress is True


@pytest.mark.parametrize("mode", ["fast", "python"])
def test_ingress_serves_the_engine_answer_and_listens_on_loopback_only(trained_checkpoint, mode: str) -> None:
    result = _serve_in_subprocess(trained_checkpoint, mode)
    for name, probability in result["expected"].items():
        assert result["answer"]["probabilities"][name] == pytest.approx(probability, abs=1e-5)

    sockets = result["sockets"]
    port = int(result["url"].rsplit(":", 1)[1])
    exposed = [f"{item['ip']}:{item['port']} ({item['process']})" for item in sockets if not item["loopback"]]
    assert not exposed, f"{mode} ingress: listening beyond loopback: {exposed}"
    front_end = {item["process"] for item in sockets if item["port"] == port}
    haproxy = [item for item in sockets if "haproxy" in item["process"]]
    if mode == "fast":
        assert any("haproxy" in process for process in front_end), front_end
        # front end, stats page, Prometheus exporter: Ray's template binds the last two on every interface,
        # haproxy_bind.sh moves them to loopback; their ports are free ones, never Ray's fixed 8404 and 9101.
        assert len(haproxy) == 3
        assert not {item["port"] for item in haproxy} & {8404, 9101}
    else:
        assert not haproxy
        assert any("ProxyActor" in process for process in front_end), front_end
