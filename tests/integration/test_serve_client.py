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
    command = [
        sys.executable, "-m", "hrm_platform.cli", "predict",
        "--url", serve_app.url, "--bars", str(csv), "--position", "0.5",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "position +0.50" in lines[0]
    assert [line.split(" @ ")[0] for line in lines[1:]] == ["SYN00", "SYN01"]
    assert all(re.search(r": (HOLD|BUY |SELL) quantity", line) for line in lines[1:])

    refused = subprocess.run(
        command, capture_output=True, text=True, env={**env, "HRM_API_TOKEN": "wrong"}, timeout=120
    )
    assert refused.returncode == 1
    assert "401" in refused.stderr and "unauthorized" in refused.stderr


def readme_http_api_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    return text.split("\n## HTTP API", 1)[1].split("\n## ", 1)[0]


def curl_lines(block: str) -> list[tuple[str, str]]:
    """(command, trailing comment) of each curl line of a ```bash block (continuation lines joined)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip().startswith("curl "):
            command, _, comment = line.partition("  # ")
            commands.append((command.strip(), comment))
    return commands


def readme_curl_commands() -> list[tuple[str, str]]:
    """(command, trailing comment) for each curl command of the README's HTTP API section."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_http_api_section(), flags=re.DOTALL)
    return [command for block in blocks for command in curl_lines(block)]


def readme_stream_commands(section: str) -> list[tuple[str, str]]:
    """The curl lines of the ```bash block inside the paragraph that opens with **Streams** (before the next
    paragraph that opens in bold); fails when there is none."""
    assert "\n**Streams**" in section, "the README's HTTP API section has no **Streams** paragraph"
    paragraph = re.split(r"\n\*\*(?!Streams)", section.split("\n**Streams**", 1)[1], maxsplit=1)[0]
    block = re.search(r"```bash\n(.*?)```", paragraph, flags=re.DOTALL)
    assert block, "the README's **Streams** paragraph has no ```bash block of curl examples"
    return curl_lines(block.group(1))


def run_curl(serve_app, command: str) -> dict:
    env = {**os.environ, "HRM_URL": serve_app.url, "HRM_API_TOKEN": serve_app.token}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return json.loads(done.stdout)


def test_readme_curl_examples_work_against_the_live_server(serve_app):
    commands = readme_curl_commands()
    assert len(commands) >= 5
    for command, comment in commands:
        body = run_curl(serve_app, command)
        expected_error = re.search(r"-> (\d{3})", comment)
        if expected_error:  # the README shows what an error looks like (a stream's 409 adds bars_needed)
            assert {"error", "field", "detail"} <= set(body), command
        else:
            assert "error" not in body, f"{command}: {body}"


STREAM_METHODS = ("PUT", "POST", "GET", "DELETE")


def stream_method(command: str) -> str:
    explicit = re.search(r"-X (PUT|DELETE)\b", command)
    return explicit.group(1) if explicit else ("POST" if "/bars" in command else "GET")


def test_readme_stream_examples_create_append_read_and_delete_a_stream(serve_app, engine):
    """The **Streams** curl block, in order, against the live server: PUT seeds a stream (>= bars_needed bars),
    POST .../bars adds to it, GET reads it, DELETE drops it; each line names its stream in X-Stream-Id (HAProxy
    routes by that header), and a line marked `-> 409` shows stream_unknown naming bars_needed."""
    commands = readme_stream_commands(readme_http_api_section())
    assert [stream_method(command) for command, comment in commands if "->" not in comment] == list(STREAM_METHODS)
    seen = None
    for command, comment in commands:
        path_id = re.search(r"/v1/streams/([A-Za-z0-9._:-]+)", command)
        header_id = re.search(r"-H 'X-Stream-Id: ([A-Za-z0-9._:-]+)'", command)
        assert path_id and header_id and path_id.group(1) == header_id.group(1), command
        body, method = run_curl(serve_app, command), stream_method(command)
        if re.search(r"-> 409", comment):
            assert body["error"] == "stream_unknown" and body["bars_needed"] == engine.bars_needed, (command, body)
        elif method == "PUT":
            assert body["stream_id"] == path_id.group(1) and body["bars_seen"] >= engine.bars_needed, (command, body)
            assert body["action"] in ("hold", "buy", "sell")
            seen = body["bars_seen"]
        elif method == "POST":
            assert seen is not None and body["bars_seen"] > seen and "target_position" in body, (command, body)
            seen = body["bars_seen"]
        elif method == "GET":
            assert body["bars_seen"] == seen and body["bars_held"] == engine.bars_needed, (command, body)
        else:
            assert body == {"stream_id": path_id.group(1), "deleted": True}, (command, body)


def test_only_loopback_listens_on_the_serve_port(serve_app):
    port = serve_app.url.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.splitlines()
    addresses = [line.split()[3] for line in listening if line.split()[3].rsplit(":", 1)[1] == port]
    assert addresses == [f"127.0.0.1:{port}"]
