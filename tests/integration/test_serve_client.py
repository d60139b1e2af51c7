"""The `hrm predict` client, the README's curl examples and the serve port's binds, against the live app."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hrm_platform.data.market import generate_market

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_hrm_predict_cli_prints_one_decision_per_symbol(serve_app, tmp_path):
    market = generate_market(2, 300, seed=9, horizon=4)
    frames = [frame.assign(symbol=symbol) for symbol, frame in market.bars.items()]
    csv = tmp_path / "bars.csv"
    pd.concat(frames).to_csv(csv)
    env = {**os.environ, "HRM_API_TOKEN": serve_app.token}
    command = [sys.executable, "-m", "hrm_platform.cli", "predict", "--url", serve_app.url, "--bars", str(csv), "--position", "0.5"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "position +0.50" in lines[0]
    assert [line.split(" @ ")[0] for line in lines[1:]] == ["SYN00", "SYN01"]
    assert all(re.search(r": (HOLD|BUY |SELL) quantity", line) for line in lines[1:])

    refused = subprocess.run(command, capture_output=True, text=True, env={**env, "HRM_API_TOKEN": "wrong"}, timeout=120)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "unauthorized" in refused.stderr


def readme_curl_commands() -> list[tuple[str, str]]:
    """(command, trailing comment) for each curl command of the README's HTTP API section."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## HTTP API", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("curl "):
                command, _, comment = line.partition("  # ")
                commands.append((command.strip(), comment))
    return commands


def test_readme_curl_examples_work_against_the_live_server(serve_app):
    commands = readme_curl_commands()
    assert len(commands) >= 5
    env = {**os.environ, "HRM_URL": serve_app.url, "HRM_API_TOKEN": serve_app.token}
    for command, comment in commands:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        body = json.loads(done.stdout)
        expected_error = re.search(r"-> (\d{3})", comment)
        if expected_error:  # the README shows what an error looks like
            assert set(body) == {"error", "field", "detail"}, command
        else:
            assert "error" not in body, f"{command}: {body}"


def test_only_loopback_listens_on_the_serve_port(serve_app):
    port = serve_app.url.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.splitlines()
    addresses = [line.split()[3] for line in listening if line.split()[3].rsplit(":", 1)[1] == port]
    assert addresses == [f"127.0.0.1:{port}"]
