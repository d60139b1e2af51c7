"""What serving says to its user (issue 20, point 10): `hrm serve`'s start-up lines, the demo's closing
"try it" line, and `hrm predict`'s hint on a 401. No Ray is started: the lines are composed by small functions,
and the 401 comes from a tiny local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from hrm_platform import cli
from hrm_platform.demo import BurstResult, DemoSummary
from hrm_platform.serving.lifecycle import served_engine, start_message
from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir, write_serving_manifest

URL = "http://127.0.0.1:8123"
CURL = f"curl -s {URL}/v1/predict -H 'Content-Type: application/json' -d @/tmp/demo/example_request.json"


# ---------------------------------------------------------------------------------------- hrm serve


def _export(checkpoint: Path, model_version: str, chosen: str | None) -> None:
    serving_dir(checkpoint).mkdir(parents=True)
    write_serving_manifest(serving_dir(checkpoint) / SERVING_MANIFEST, model_version, chosen, {"files": {}})


def test_engine_without_an_export_says_unoptimised_and_how_to_export(tmp_path: Path) -> None:
    assert served_engine(tmp_path, "auto", "0123456789ab") == (
        f"eager fp32 (unoptimised: no export found; run `hrm export --checkpoint {tmp_path}`)"
    )


def test_engine_is_the_one_export_chose(tmp_path: Path) -> None:
    _export(tmp_path, "0123456789ab", "jit_int8")
    assert served_engine(tmp_path, "auto", "0123456789ab") == "jit_int8 (chosen by `hrm export`)"
    assert served_engine(tmp_path, "int8", "0123456789ab") == "int8 (serve.engine_variant)"


def test_engine_of_an_export_for_another_model_is_unoptimised(tmp_path: Path) -> None:
    _export(tmp_path, "another00000", "jit_int8")
    assert served_engine(tmp_path, "auto", "0123456789ab").startswith("eager fp32 (unoptimised: no export found")


def test_engine_when_export_chose_nothing(tmp_path: Path) -> None:
    _export(tmp_path, "0123456789ab", None)
    assert served_engine(tmp_path, "auto", "0123456789ab") == (
        "eager fp32 (`hrm export` found no variant that passed its checks)"
    )


def test_start_message_with_an_export_and_a_token() -> None:
    """Before: only `serving DIR at URL (docs: ...; Ctrl-C stops)` and a curl line."""
    message = start_message(
        Path("runs/demo/epoch_0002"), URL, "0123456789ab",
        engine="jit_int8 (chosen by `hrm export`)", token_env="HRM_API_TOKEN", token_required=True,
    )
    assert message.splitlines() == [
        f"serving runs/demo/epoch_0002 at {URL}  (docs: {URL}/docs; Ctrl-C stops)",
        "  model   0123456789ab",
        "  engine  jit_int8 (chosen by `hrm export`)",
        '  auth    token required (HRM_API_TOKEN): send -H "Authorization: Bearer $HRM_API_TOKEN"',
        f"  curl -s {URL}/v1/health",
    ]


def test_start_message_unoptimised_and_without_a_token(tmp_path: Path) -> None:
    message = start_message(
        tmp_path, URL, "0123456789ab",
        engine=served_engine(tmp_path, "auto", "0123456789ab"), token_env="MY_TOKEN", token_required=False,
    )
    assert f"  engine  eager fp32 (unoptimised: no export found; run `hrm export --checkpoint {tmp_path}`)" in message
    assert "  auth    no token: anyone who reaches the port may call it (set MY_TOKEN before `hrm serve`" in message


# ------------------------------------------------------------------------------------------ hrm demo


def _summary() -> DemoSummary:
    burst = BurstResult(requests=60, errors=0, cache_hits=12, p50_ms=3.1, p99_ms=9.8, mean_segments=2.4,
                        segments_limit=4)
    return DemoSummary(
        checkpoint="/tmp/demo/report/runs/fold_3/epoch_0002", report_dir="/tmp/demo/report", url=URL,
        validation_accuracy=0.41, test_accuracy=0.39, folds=4, out_of_sample="2021-01-04 .. 2023-12-29 (3000 bars)",
        bar_frequency="252 bars per year", sharpe={"model": 0.8}, sharpe_ci={"model": [0.1, 1.5]}, confidence=0.95,
        information_coefficient={"model": 0.05}, information_coefficient_ci={"model": [0.01, 0.09]},
        engine_variant="jit_int8", engine_speedup_batch1=2.5, burst=burst, stage_seconds={"walk-forward": 120.0},
        curl=CURL,
    )


def test_demo_that_stopped_its_server_says_so_and_names_keep_serving() -> None:
    """Before: `try it  curl ...` pointed at the server the demo had just stopped."""
    lines = _summary().render(keep_serving=False).splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith("try it"))
    assert "stops its server" in lines[at] and "rerun with `hrm demo --keep-serving`" in lines[at]
    assert lines[at + 1].strip() == CURL


def test_demo_that_keeps_serving_prints_the_curl_as_before() -> None:
    text = _summary().render(keep_serving=True)
    assert f"try it                {CURL}" in text.splitlines()
    assert "--keep-serving" not in text


# --------------------------------------------------------------------------------------- hrm predict


class _Unauthorized(BaseHTTPRequestHandler):
    """Answers every request as the HRM server does without the right bearer token."""

    seen_authorization: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:  # http.server calls do_<METHOD>
        type(self).seen_authorization.append(self.headers.get("Authorization"))
        body = json.dumps({"error": "unauthorized", "detail": "missing or wrong bearer token",
                           "field": "Authorization"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("WWW-Authenticate", "Bearer")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def unauthorized_url() -> Iterator[str]:
    _Unauthorized.seen_authorization = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_predict_on_401_without_a_token_hints_at_the_token_env(
    unauthorized_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: only `hrm predict: GET /v1/model -> 401: unauthorized: ...`."""
    monkeypatch.delenv("HRM_API_TOKEN", raising=False)
    assert cli.main(["predict", "--url", unauthorized_url, "--bars", str(tmp_path / "bars.csv")]) == 1
    err = capsys.readouterr().err
    assert "hrm predict: GET /v1/model -> 401: unauthorized: Authorization: missing or wrong bearer token" in err
    assert "hrm predict: the server requires a bearer token: set HRM_API_TOKEN (or --token-env NAME)" in err
    assert _Unauthorized.seen_authorization == [None]


def test_predict_on_401_with_a_token_says_the_token_was_refused(
    unauthorized_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MY_TOKEN", "wrong-token")
    args = ["predict", "--url", unauthorized_url, "--bars", str(tmp_path / "bars.csv"), "--token-env", "MY_TOKEN"]
    assert cli.main(args) == 1
    assert "hrm predict: the server refused the bearer token in MY_TOKEN" in capsys.readouterr().err
    assert _Unauthorized.seen_authorization == ["Bearer wrong-token"]


def test_predict_with_an_unreadable_bars_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad file is the user's input: exit 2 like every command (was 1, like an unreachable server)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bad = tmp_path / "bars.csv"
        bad.write_text("date,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10\n2024-01-02,1,0.5,2,1,10\n")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert cli.main(["predict", "--url", url, "--bars", str(bad)]) == 2
        assert "row 2 (line 3): high < low" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


class _ModelOnly(BaseHTTPRequestHandler):
    """GET /v1/model as the server answers it; nothing else is reached when the file is refused."""

    def do_GET(self) -> None:
        body = json.dumps({"bars_needed": 2}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass
