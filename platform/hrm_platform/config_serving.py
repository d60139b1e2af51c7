"""The serving half of the typed configuration: the `serve` and `export` sections of `PlatformConfig`
(config.py, which imports them from here), and `Strict`, the base of every section (here, because config.py
imports this module)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A config section: an unknown key or a bad value fails at load time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ServeConfig(Strict):
    """Ray Serve deployment, engine, cache and memory guard."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    engine_variant: str = Field(
        "auto",
        pattern=r"^[a-z0-9_]+$",
        description="auto = what `hrm export` chose; else a variant of the registry in serving/variants.py "
        "(checked against it when the app is built)",
    )
    cuda_graph_buckets: tuple[int, ...] = Field(
        (1, 8, 32, 128, 512),
        description="batch sizes the cuda_graph variants capture; a batch is padded to the next one, and one "
        "larger than the last runs in chunks of the last",
    )
    torch_threads: int = Field(1, ge=1)
    checkpoint_cache_dir: str = Field(
        "~/.cache/hrm-platform/checkpoints",
        description="local copies of checkpoints read by URI (s3://, gs://, file://...; storage.py), one folder "
        "per checkpoint and content; `hrm evaluate` and `hrm export` use the default",
    )
    num_replicas: int | Literal["auto"] = Field(1, description="'auto' enables autoscaling")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fp16/bf16 variants run on CUDA)")
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(
        0.006, ge=0, description="longest time the idle engine waits for a batch of queued cache misses to fill "
        "(serving/batcher.py); a miss alone in the replica never waits. 0 = take what queued",
    )
    batch_fill: float = Field(
        0.6, gt=0, le=1, description="a batch fills at this share of the replica's concurrency (the most requests "
        "active at once over the last two batches): 0.5 alternates two halves, more merges them into fewer, larger "
        "batches (serving/batcher.py; README, Latency and throughput)",
    )
    engine_process: bool = Field(
        False,
        description="a CPU engine also runs in a child process that computes the replica's batches outside its "
        "GIL (serving/engine_process.py): more throughput under concurrent load for about one more engine's "
        "memory (README, Latency and throughput); a request alone in the replica still runs in the replica. "
        "GPU engines stay in-process",
    )
    lean_path: bool = Field(
        True,
        description="POST /v1/predict and /v1/predict/batch parse the body straight into numpy and check bars "
        "vectorised (serving/lean_path.py), answering as the FastAPI + pydantic route would, byte for byte in "
        "errors; false: that route parses them (the path before issue 21, kept for comparison)",
    )
    cache_size: int = Field(1000, ge=0, description="entries per replica; 0 disables the cache")
    cache_ttl_s: float = Field(2.0, gt=0)
    stream_idle_s: float = Field(
        900.0, gt=0, description="a stream (/v1/streams) with no request this long is dropped; its next request "
        "gets 409 stream_unknown and the client re-seeds it"
    )
    max_streams: int = Field(
        10_000, ge=1, description="streams per replica (~5 kB each at the default bars_needed); the least recently "
        "used goes when a new one would pass this"
    )
    stream_affinity: bool = Field(
        True,
        description="with fast_ingress: HAProxy picks a /v1/streams request's replica by a hash of its X-Stream-Id "
        "header, so a stream's requests reach the replica that holds it; requests without the header (/v1/predict) "
        "then go round robin instead of leastconn (README, HTTP API: its cost). false: leastconn for every request, "
        "and a stream re-seeds whenever it reaches another replica",
    )
    memory_limit_gb: float = Field(4.0, gt=0, description="hard limit per replica")
    memory_soft_fraction: float = Field(0.85, gt=0, lt=1, description="cleanup above this share of the limit")
    memory_check_interval_s: float = Field(1.0, gt=0)
    memory_stale_after_s: float = Field(60.0, gt=0, description="the guard forgets a replica silent this long")
    memory_cleanup_cooldown_s: float = Field(
        10.0, ge=0, description="least seconds between a replica's cleanups above the soft threshold"
    )
    guard_timeout_s: float = Field(2.0, gt=0, description="how long /v1/health waits for the guard's snapshot")
    start_timeout_s: float = Field(180.0, gt=0, description="how long `start_server` waits for the app to run")
    health_check_period_s: float = Field(5.0, gt=0, description="Serve's health check of each replica")
    health_check_timeout_s: float = Field(
        15.0, gt=0, description="a replica not answering its check this long restarts"
    )
    request_timeout_s: float = Field(
        2.5, gt=0, description="Serve's proxy answers 408 after this; requests fail fast while no replica is alive"
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="body limit of /v1/predict (4096 bars of real prices take ~230 kB)"
    )
    max_batch_body_bytes: int = Field(
        4_000_000,
        ge=1024,
        description="body limit of /v1/predict/batch: its 256 requests of the default model's 112 bars take ~1.6 MB "
        "at ~55 bytes a bar; this leaves room for ~280 bars each",
    )
    max_bars: int = Field(4096, ge=1, description="bars per request")
    max_price_ratio: float = Field(
        10.0,
        gt=1,
        description="a request's bar with a price more than this factor above or below the median close of its bars "
        "is refused (422): an implausible jump, e.g. a 1e308 close after closes near 100",
    )
    auth_token_env: str = Field("HRM_API_TOKEN", description="env var holding the bearer token; unset = no auth")
    access_log: bool = Field(
        False, description="Serve's per-request access log lines in the replica's log (a log record per request "
        "on the replica's event loop, so off by default; HAProxy and the hrm_* metrics still see every request); "
        "true logs Serve at INFO at least, whatever serve.log_level says",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="the level of Serve's own logger (`ray.serve`) in the replicas; ours are apart. "
        "Serve builds an access-log record for every request at INFO even with the access log off, on the "
        "replica's event loop: WARNING skips that work; INFO adds Serve's replica lifecycle lines",
    )
    fast_ingress: bool = Field(
        True,
        description="Ray's HAProxy ingress + throughput-optimised data plane (README: HTTP API has the p50 of both); "
        "false = Serve's Python proxy. Read when Serve starts on a cluster (serving/ingress.py)",
    )
    ingress_metrics: bool = Field(
        False,
        description="with fast_ingress: Serve's per-request HTTP metrics from HAProxy (serve_num_http_requests, "
        "serve_http_request_latency_ms). Each request then also passes through a Python log collector; off, "
        "throughput at c=32 is higher (README, Benchmarks). The replicas' hrm_* metrics are exported either way",
    )

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        buckets = self.cuda_graph_buckets
        if not buckets or any(size < 1 for size in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError(
                f"serve.cuda_graph_buckets={list(buckets)} must be distinct batch sizes >= 1 in increasing order"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serve.min_replicas={self.min_replicas} exceeds serve.max_replicas={self.max_replicas}"
            )
        if self.max_batch_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"serve.max_batch_body_bytes={self.max_batch_body_bytes} is below serve.max_body_bytes="
                f"{self.max_body_bytes}: a batch of one request must fit where the request alone fits"
            )
        return self


class ExportConfig(Strict):
    """`hrm export`: the checks a variant must pass and how its speed is measured."""

    min_agreement: float = Field(0.99, gt=0, le=1, description="share of actions equal to eager fp32's")
    max_probability_diff: float = Field(0.05, ge=0, description="largest probability difference at M segments")
    max_ready_s: float = Field(15.0, gt=0, description="a fresh replica's start budget on a quiet machine")
    max_ready_vs_eager: float = Field(
        2.0, gt=0, description="... or this multiple of eager fp32's start measured beside it (a loaded machine)"
    )
    eval_windows: int = Field(512, ge=1, description="held-out windows for the agreement check")
    min_eval_windows: int = Field(
        256, ge=1, description="fewest held-out windows (test + val) the agreement check accepts"
    )
    repeats_batch1: int = Field(40, ge=1)
    repeats_batch32: int = Field(8, ge=1)
    measure_ready: bool = Field(True, description="time a fresh process loading each passing variant")
    ready_timeout_s: float = Field(120.0, gt=0, description="a fresh replica not ready after this is not servable")
