"""The main job, end to end on an embedded local Ray cluster: `make demo` (= `hrm demo`).

    data -> walk-forward: per fold a Ray Train run (DDP, 2 workers) and trained baselines, backtested on
            the fold's out-of-sample period -> pooled report with intervals -> engine export of the last
            fold's model (trained on the most history) -> Ray Serve on 127.0.0.1 -> a burst of real HTTP
            requests -> summary

Every stage prints a line when it starts, so a user sees where the time goes. The summary is also written
as `<out>/summary.json`, which the end-to-end test reads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hrm_platform.config import ConfigError, PlatformConfig


@dataclass
class BurstResult:
    """What a burst of HTTP requests against the live deployment showed."""

    requests: int
    errors: int
    cache_hits: int
    p50_ms: float
    p99_ms: float
    mean_segments: float
    segments_limit: int
    example: dict = field(default_factory=dict)
    first_request: dict = field(default_factory=dict)


@dataclass
class DemoSummary:
    checkpoint: str
    report_dir: str
    url: str
    validation_accuracy: float | None
    test_accuracy: float | None
    folds: int
    out_of_sample: str  # the pooled test period
    bar_frequency: str
    sharpe: dict[str, float]  # pooled out-of-sample, per strategy
    sharpe_ci: dict[str, list[float]]  # its interval
    confidence: float
    information_coefficient: dict[str, float]  # per trained model (and the oracle), pooled
    information_coefficient_ci: dict[str, list[float]]
    engine_variant: str
    engine_speedup_batch1: float | None
    burst: BurstResult
    stage_seconds: dict[str, float]
    curl: str

    def render(self, keep_serving: bool) -> str:
        """The closing summary; without `keep_serving` the demo stops its server as it ends, and says so."""
        burst = self.burst
        level = f"{self.confidence:.0%} CI"
        lines = [
            "",
            "=" * 72,
            "HRM demo summary",
            "=" * 72,
            f"walk-forward          {self.folds} out-of-sample folds pooled: {self.out_of_sample}",
            f"bar frequency         {self.bar_frequency}",
            f"Sharpe, pooled        strategy              Sharpe   {level:<18}IC (pooled, {level})",
            *(f"                      {name:<20}{value:>+7.2f}   {_interval(self.sharpe_ci[name]):<18}"
              + (f"{self.information_coefficient[name]:+.3f} {_interval(self.information_coefficient_ci[name], 3)}"
                 if name in self.information_coefficient else "")
              for name, value in self.sharpe.items()),
            f"accuracy              last fold validation {_pct(self.validation_accuracy)}, pooled test "
            f"{_pct(self.test_accuracy)}",
            f"engine                {self.engine_variant}"
            + (f" ({self.engine_speedup_batch1:.2f}x eager fp32 at batch 1)" if self.engine_speedup_batch1 else ""),
            f"HTTP burst            {burst.requests} requests, {burst.errors} errors, {burst.cache_hits} cache hits,"
            f" p50 {burst.p50_ms:.1f} ms, p99 {burst.p99_ms:.1f} ms",
            f"ACT segments          {burst.mean_segments:.2f} on average of at most {burst.segments_limit}",
            f"checkpoint            {self.checkpoint}",
            f"report and plots      {self.report_dir}/report.md",
            "stage times (s)       " + ", ".join(f"{k} {v:.0f}" for k, v in self.stage_seconds.items()),
            *_try_it(self.curl, keep_serving),
            "=" * 72,
        ]
        return "\n".join(lines)


def _try_it(curl: str, keep_serving: bool) -> list[str]:
    if keep_serving:
        return [f"try it                {curl}"]
    return [
        "try it                the demo stops its server as it ends: rerun with `hrm demo --keep-serving`, then",
        f"                      {curl}",
    ]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _interval(bounds: list[float], decimals: int = 2) -> str:
    return f"[{bounds[0]:+.{decimals}f}, {bounds[1]:+.{decimals}f}]"


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n==> {name}", flush=True)
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started
    print(f"    {name} done in {timings[name]:.1f} s", flush=True)


def check_before_training(config: PlatformConfig) -> None:
    """What would stop the demo after minutes of training, checked first (ConfigError, naming the setting):
    a serve.port in use, or data with too few held-out windows for export's agreement check."""
    from hrm_platform.data.dataset import build_datasets
    from hrm_platform.evaluation.walk_forward import check_folds, fold_config
    from hrm_platform.serving.export_checks import too_few_windows_message
    from hrm_platform.serving.ingress import check_port_free

    check_port_free(config.serve.host, config.serve.port)
    check_folds(config, config.data.folds)
    last_fold = fold_config(config, config.data.folds - 1, config.data.folds, Path("."))
    bundle = build_datasets(last_fold.data)  # the fold whose model is exported and served
    held_out = len(bundle.test) + len(bundle.val)
    if held_out < config.export.min_eval_windows:
        raise ConfigError(too_few_windows_message(held_out, config.export.min_eval_windows))


def run_demo(config: PlatformConfig, keep_serving: bool, out_dir: Path, verbose: bool = False) -> int:
    """Run every stage; returns the process exit code. `config.data` already points at a `--data` file when
    one was given (the CLI turns `--data` into overrides). `verbose` forwards the Ray workers' own logs."""
    from hrm_platform.evaluation.walk_forward import run_walk_forward
    from hrm_platform.evaluation.walk_forward_report import write_walk_forward_report
    from hrm_platform.local_ray import init_local_ray
    from hrm_platform.serving.export import export_engine
    from hrm_platform.serving.lifecycle import start_server

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    walk_forward_dir = out_dir / "report"
    previous = walk_forward_dir / "runs"
    if previous.exists():  # the demo always trains what it says: its own previous runs go
        print(f"==> replacing the previous demo runs in {previous}", flush=True)
        shutil.rmtree(previous)
    config.serve.access_log = False  # the burst's summary says more than 60 access-log lines
    timings: dict[str, float] = {}
    # One cluster for every stage: training and serving reuse it instead of starting their own.
    # Without --verbose no worker log is forwarded: the stages print their own lines, which Ray's chatter
    # (placement-group cleaners, report dumps, core-worker warnings) would bury.
    init_local_ray(num_cpus=max(os.cpu_count() or 1, config.train.worker_range[1]), log_to_driver=verbose)

    folds = config.data.folds
    with _stage("walk-forward", timings):
        print(f"    {folds} folds, each: a Ray Train run (DDP), then baselines fitted and everything backtested",
              flush=True)
        runs = run_walk_forward(config, folds, walk_forward_dir, progress=lambda line: print(f"    {line}", flush=True))
        evaluation = write_walk_forward_report(runs, config, walk_forward_dir)
        print(evaluation.summary(), flush=True)
    checkpoint = Path(runs[-1].checkpoint)
    with _stage("export (engine variants)", timings):
        export = export_engine(checkpoint, progress=lambda line: print(f"    {line}", flush=True))
        print(export.summary(), flush=True)
    with _stage("serve (Ray Serve on 127.0.0.1)", timings):
        url = start_server(checkpoint, config.serve)
        print(f"    serving at {url}", flush=True)
    try:
        with _stage("HTTP burst", timings):
            burst = send_burst(url, config)
        summary = _summarise(runs[-1], evaluation, export, burst, url, out_dir, timings)
        print(summary.render(keep_serving), flush=True)
        (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str))
        if keep_serving:
            _wait_for_interrupt(url)
    finally:
        _shutdown()
    return 0 if burst.errors == 0 else 1


def _summarise(last_fold, evaluation, export, burst, url, out_dir, timings) -> DemoSummary:
    pooled = evaluation.metrics["pooled"]
    ic = pooled["information_coefficient"]
    return DemoSummary(
        checkpoint=last_fold.checkpoint,
        report_dir=str(evaluation.out_dir),
        url=url,
        validation_accuracy=last_fold.validation_accuracy,
        test_accuracy=pooled["accuracy"].get("model"),
        folds=len(evaluation.metrics["folds"]),
        out_of_sample=f"{pooled['test_start']} .. {pooled['test_end']} ({pooled['bars']} bars)",
        bar_frequency=evaluation.metrics["data"]["frequency_text"],
        sharpe={name: float(values["sharpe"]) for name, values in pooled["portfolio"].items()},
        sharpe_ci={name: list(values["sharpe_ci"]) for name, values in pooled["portfolio"].items()},
        confidence=pooled["bootstrap"]["confidence"],
        information_coefficient={name: values["pearson"]["estimate"] for name, values in ic.items()},
        information_coefficient_ci={name: [values["pearson"]["low"], values["pearson"]["high"]]
                                    for name, values in ic.items()},
        engine_variant=export.chosen_variant,
        engine_speedup_batch1=export.speedup_batch1,
        burst=burst,
        stage_seconds=timings,
        curl=curl_example(url, _write_example_request(out_dir, burst)),
    )


def _write_example_request(out_dir: Path, burst: BurstResult) -> Path:
    path = out_dir / "example_request.json"
    path.write_text(json.dumps(burst.first_request))
    return path


def client_windows(config: PlatformConfig, count: int) -> list[np.ndarray]:
    """`count` raw OHLCV windows, each `bars_needed` long, spread over the most recent history: what a
    client would send. (n, 5) float64 each."""
    from hrm_platform.data.dataset import build_datasets

    bundle = build_datasets(config.data)
    needed = bundle.feature_spec.bars_needed
    series = [frame[["open", "high", "low", "close", "volume"]].to_numpy() for frame in bundle.bars.values()]
    per_series = -(-count // len(series))  # ceil
    windows = []
    for values in series:
        ends = np.linspace(len(values) - per_series * 4, len(values), per_series, dtype=int)
        windows += [values[end - needed : end] for end in ends if end >= needed]
    return windows[:count]


def send_burst(url: str, config: PlatformConfig, n_distinct: int = 48) -> BurstResult:
    """Distinct requests (every fourth with a one-segment budget), then repeats of the first quarter,
    which the replica's cache answers."""
    import httpx

    bars = client_windows(config, n_distinct)
    bodies = [_body(window, max_segments=1 if i % 4 == 3 else None) for i, window in enumerate(bars)]
    bodies += bodies[: max(1, len(bodies) // 4)]
    latencies, segments, errors, hits, example = [], [], 0, 0, {}
    with httpx.Client(base_url=url, timeout=30.0, headers=_auth_headers(config)) as client:
        for body in bodies:
            started = time.perf_counter()
            response = client.post("/v1/predict", json=body)
            latencies.append(1000 * (time.perf_counter() - started))
            if response.status_code != 200:
                errors += 1
                continue
            answer = response.json()
            hits += bool(answer["cached"])
            segments.append(answer["segments"])
            example = example or answer
    return BurstResult(
        requests=len(bodies),
        errors=errors,
        cache_hits=hits,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        mean_segments=float(np.mean(segments)) if segments else 0.0,
        segments_limit=config.model.max_segments,
        example=example,
        first_request=bodies[0],
    )


def _body(window: np.ndarray, max_segments: int | None) -> dict:
    return {"bars": np.round(window, 6).tolist(), "position": 0.0, "max_segments": max_segments}


def _auth_headers(config: PlatformConfig) -> dict[str, str]:
    token = os.environ.get(config.serve.auth_token_env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def curl_example(url: str, request_path: Path) -> str:
    return f"curl -s {url}/v1/predict -H 'Content-Type: application/json' -d @{request_path}"


def _shutdown() -> None:
    """Stop the demo's own cluster; Serve, HAProxy and the replicas go with it (serve.shutdown() first would
    wait for Serve's controller to time out with the HAProxy ingress: README, Troubleshooting)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _wait_for_interrupt(url: str) -> None:
    print(f"\nServing at {url} (docs: {url}/docs). Press Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
