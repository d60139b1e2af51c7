"""HTTP load from wrk (an independent C load generator), beside http_load.py's asyncio client: the same bodies,
sent in the same order, through benchmarks/wrk_post.lua.

    body_file = write_bodies(bodies, directory)             # one JSON body a line
    result = run_wrk(url, body_file, start, concurrency=32, seconds=8)
    result.throughput, result.p50_ms, result.errors, result.next_body

wrk has no warm-up: a round's first requests open the connections. Its latencies cover every completed
response (non-2xx too); `throughput` counts the 2xx ones only, like http_load.LoadResult.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("wrk_post.lua")
RESULT_PREFIX = "WRK_RESULT"
WRK_MISSING = "wrk is not on PATH (install Debian's package: apt-get install wrk)"
TIMEOUT_S = 10  # wrk's per-request timeout (its default, 2 s, would count a slow naive answer as a socket error)
_FIELD = re.compile(r"(\w+)=(\S+)")
_INT_FIELDS = ("requests", "non_2xx", "socket_errors", "next_body")
_FLOAT_FIELDS = ("seconds", "rps", "p50_ms", "p99_ms")


class WrkError(RuntimeError):
    """wrk failed or printed no result line."""


@dataclass
class WrkResult:
    """One wrk run, as wrk_post.lua's done() reports it (a sibling of http_load.LoadResult)."""

    concurrency: int
    requests: int  # completed responses, non-2xx included
    non_2xx: int
    socket_errors: int
    seconds: float
    rps: float  # wrk's requests/s (all completed responses)
    p50_ms: float
    p99_ms: float
    next_body: int  # index of the first body the run did not send

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def throughput(self) -> float:
        """2xx answers per second."""
        return (self.requests - self.non_2xx) / self.seconds if self.seconds > 0 else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def choose_clients(requested: str | None) -> list[str]:
    """The load generators for --client wrk|python|both (None: both). Without wrk on PATH: python alone, said
    once with the install hint; --client wrk is then refused (nothing to measure with)."""
    if wrk_path() is not None:
        return {"wrk": ["wrk"], "python": ["python"]}.get(requested or "both", ["python", "wrk"])
    if requested == "wrk":
        raise SystemExit(f"--client wrk: {WRK_MISSING}")
    if requested != "python":
        print(f"{WRK_MISSING}: measuring with the asyncio client only", flush=True)
    return ["python"]


def write_bodies(bodies: list[bytes], directory: Path) -> Path:
    """The bodies, one a line, in order, for wrk_post.lua (a body must hold no newline: compact JSON)."""
    if any(b"\n" in body for body in bodies):
        raise ValueError("a body holds a newline; wrk_post.lua reads one body a line")
    path = Path(directory) / "bodies.jsonl"
    with path.open("wb") as out:
        for body in bodies:
            out.write(body + b"\n")
    return path


def wrk_command(url: str, body_file: Path, start: int, concurrency: int, seconds: float) -> list[str]:
    """wrk, one thread, `concurrency` connections, whole seconds (wrk takes no fraction), latency percentiles."""
    return [wrk_path() or "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={TIMEOUT_S}s",
            "--latency", "-s", str(SCRIPT), url, "--", str(body_file), str(start)]


def parse_result(output: str, concurrency: int) -> WrkResult:
    """The WRK_RESULT line of wrk's output -> WrkResult."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX + " "):
            fields = dict(_FIELD.findall(line))
            missing = [name for name in _INT_FIELDS + _FLOAT_FIELDS if name not in fields]
            if missing:
                raise WrkError(f"wrk result line lacks {', '.join(missing)}: {line!r}")
            return WrkResult(concurrency=concurrency, **{name: int(fields[name]) for name in _INT_FIELDS},
                             **{name: float(fields[name]) for name in _FLOAT_FIELDS})
    raise WrkError(f"no {RESULT_PREFIX} line in wrk's output:\n{output[-2000:]}")


def run_wrk(url: str, body_file: Path, start: int, concurrency: int, seconds: float) -> WrkResult:
    command = wrk_command(url, body_file, start, concurrency, seconds)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if completed.returncode != 0:
        raise WrkError(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr[-2000:]}")
    return parse_result(completed.stdout, concurrency)
