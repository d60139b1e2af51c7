"""The deployed app as the reliability tests see it: where it is, its token, what it serves."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hrm_platform.config import ServeConfig


@dataclass(frozen=True)
class AppUnderTest:
    url: str
    token: str
    checkpoint: Path  # what the app serves; tests copy it before damaging anything
    serve_config: ServeConfig
    bars_needed: int
    model_version: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=timeout)

    def post(
        self, path: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0, **body
    ) -> httpx.Response:
        return httpx.post(self.url + path, headers={**self.headers, **(headers or {})}, timeout=timeout, **body)


def wait_until_serving(app: AppUnderTest, timeout_s: float) -> dict:
    """Health says ok and names the expected model version (after a restart or a reload settles)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = app.get("/v1/health", timeout=5.0)
            health = response.json()
            serving = health["status"] == "ok" and health["model_version"] == app.model_version
            if response.status_code == 200 and serving:
                return health
            last = f"{response.status_code} {response.text[:300]}"
        except (httpx.HTTPError, ValueError, KeyError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.5)
    raise TimeoutError(f"{app.url} not serving {app.model_version} after {timeout_s:.0f} s (last: {last})")
