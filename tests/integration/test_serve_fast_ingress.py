"""serve.fast_ingress (Ray's HAProxy ingress + throughput-optimised data plane) on its own local Ray cluster:
it serves the same answers, its HTTP front end binds loopback, and the only sockets it opens beyond loopback
are HAProxy's stats and Prometheus ports (why it is off by default)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    import httpx, ray
    from hrm_platform.config import ServeConfig
    from hrm_platform.serving.app import free_port, start_server
    from hrm_platform.serving.engine import InferenceEngine, synthetic_bars

    checkpoint = sys.argv[1]
    config = ServeConfig(port=free_port(), fast_ingress=True, cache_size=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = start_server(checkpoint, config)
        bars = synthetic_bars(InferenceEngine.from_checkpoint(checkpoint).bars_needed + 5, seed=3)
        answer = httpx.post(url + "/v1/predict", json={"bars": bars.tolist()}, timeout=30).json()
        expected = InferenceEngine.from_checkpoint(checkpoint).predict_bars([bars])[0]
        sockets = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        print(json.dumps({"url": url, "answer": answer, "expected": expected.probabilities,
                          "sockets": sockets}))
    finally:
        ray.shutdown()
    """
)


def test_fast_ingress_serves_and_binds_loopback_except_haproxy_stats(trained_checkpoint):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(trained_checkpoint)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, probability in result["expected"].items():
        assert result["answer"]["probabilities"][name] == pytest.approx(probability, abs=1e-5)

    port = result["url"].rsplit(":", 1)[1]
    haproxy = [line.split() for line in result["sockets"].splitlines() if '"haproxy"' in line]
    by_port = {}
    for fields in haproxy:
        address, owner = fields[3], fields[-1]
        pid = owner.split("pid=")[1].split(",")[0]
        by_port.setdefault(address.rsplit(":", 1)[1], set()).add((address, pid))
    ours = {pid for _, pid in by_port[port]}  # the HAProxy serving our port (other clusters may run one too)
    listening = {address for addresses in by_port.values() for address, pid in addresses if pid in ours}
    loopback = {address for address in listening if address.startswith("127.0.0.1:")}
    everywhere = {address for address in listening if address.startswith(("0.0.0.0:", "*:", "[::]:"))}
    assert loopback == {f"127.0.0.1:{port}"}  # the HTTP front end: loopback, as configured
    # HAProxy's stats page and Prometheus exporter: Ray's template binds them on all interfaces; we only
    # move them off their fixed ports (8404, 9101) so that parallel clusters do not collide.
    assert len(everywhere) == 2 and listening == loopback | everywhere
    assert not {address.rsplit(":", 1)[1] for address in everywhere} & {"8404", "9101"}
