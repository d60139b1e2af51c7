"""HTTP client for a running server: bars from a CSV/Parquet file in, one decision per symbol out.

    hrm predict --url http://127.0.0.1:8000 --bars bars.csv [--position 0.5] [--max-segments 2]
    print(predict_from_file("http://127.0.0.1:8000", Path("bars.csv"), position=0.5, max_segments=None))

The file is read and validated with `data.ohlcv.load_ohlcv` (the same checks the server applies); the
client asks /v1/model how many bars the model needs and sends each symbol's most recent bars in one
/v1/predict/batch request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from hrm_platform.data.ohlcv import BAR_COLUMNS, load_ohlcv


class ClientError(RuntimeError):
    """The server refused the request or could not be reached; the message says which and why, and `status`
    holds the HTTP status of a refusal (None when the server was not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def predict_from_file(
    url: str,
    bars_path: Path,
    position: float = 0.0,
    max_segments: int | None = None,
    token: str | None = None,
    timeout_s: float = 30.0,
) -> str:
    """One line per symbol in the file: the decision, its confidence and the trade from `position`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        model = _call(client, "GET", "/v1/model")
        instruments = load_ohlcv(Path(bars_path), min_rows=model["bars_needed"])
        requests = [
            {"bars": frame[list(BAR_COLUMNS)].to_numpy()[-model["bars_needed"]:].tolist(),
             "position": position, "max_segments": max_segments}
            for frame in instruments.values()
        ]
        answers = _call(client, "POST", "/v1/predict/batch", json={"requests": requests})["responses"]
    header = f"model {model['model_version']} ({model['variant']}) at {url}, position {position:+.2f}"
    lines = [_describe(symbol, frame.index[-1], answer) for (symbol, frame), answer in zip(instruments.items(), answers)]
    return "\n".join([header, *lines])


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise ClientError(f"cannot reach {client.base_url}{path}: {error}") from None
    if response.status_code != 200:
        raise ClientError(f"{method} {path} -> {response.status_code}: {_error_text(response)}", response.status_code)
    return response.json()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    field = f"{body.get('field')}: " if body.get("field") else ""
    return f"{body.get('error', 'error')}: {field}{body.get('detail', body)}"


def _describe(symbol: str, last_bar: Any, answer: dict[str, Any]) -> str:
    probabilities = " ".join(f"{name} {p:.2f}" for name, p in answer["probabilities"].items())
    return (
        f"{symbol} @ {last_bar}: {answer['action'].upper():4s} quantity {answer['quantity']:.3f} "
        f"confidence {answer['confidence']:.2f} -> target {answer['target_position']:+.3f}, "
        f"trade {answer['trade']:+.3f} ({probabilities}; {answer['segments']} segments"
        f"{', cached' if answer['cached'] else ''}, {answer['latency_ms']:.1f} ms)"
    )


def unauthorized_hint(token_env: str, token_sent: bool) -> str:
    """What to do about a 401: send a token, or check the one sent."""
    if token_sent:
        return f"the server refused the bearer token in {token_env}: it must equal the token the server was started with"
    return f"the server requires a bearer token: set {token_env} (or --token-env NAME)"
