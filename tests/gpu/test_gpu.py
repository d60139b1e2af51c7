"""What only a GPU shows: NCCL under Ray Train, bf16 and fp16 training, the half-precision and CUDA-graph
engines against fp32, NVML readings and the CUDA branch of the memory cleanup, and Serve with a GPU replica.

Marked `gpu`: skipped without CUDA (tests/conftest.py), so CI on CPU is unchanged. `make gpu-check` runs
them with the GPU benchmarks on a machine with a GPU.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from hrm_platform.checkpoint import load_checkpoint, load_manifest
from hrm_platform.config import load_config
from hrm_platform.serving.engine import InferenceEngine, synthetic_bars
from hrm_platform.serving.export import ExportSettings, compare_engines, held_out_windows
from hrm_platform.serving.memory_guard import MemoryReader, cleanup
from hrm_platform.training.local import train_local
from tests.training_steps import step_losses

pytestmark = pytest.mark.gpu

SMOKE = "jobs/configs/smoke.yaml"
GPU_VARIANTS = ("fp16", "bf16", "cuda_graph", "cuda_graph_compiled")
MiB = 2**20


@pytest.mark.ray
def test_ray_train_on_one_gpu_uses_nccl_and_bf16(ray_cluster, tmp_path):
    from hrm_platform.training.trainer import run_training

    overrides = [
        "train.use_gpu=true", "train.num_workers=1", "train.precision=bf16", "train.epochs=1",
        f"train.storage_path={tmp_path}", "train.name=gpu-nccl",
    ]
    summary = run_training(load_config(SMOKE, overrides), quiet=True)
    epoch = summary.final_metrics
    assert epoch["distributed_backend"] == "nccl"
    assert math.isfinite(epoch["train_loss"])
    assert epoch["achieved_tflops"] > 0
    assert epoch["mfu"] is None or 0 < epoch["mfu"] < 1
    assert epoch["peak_memory_mb"] > 0  # torch.cuda.max_memory_allocated: the model ran on the GPU


def test_fp16_training_uses_the_grad_scaler(tmp_path):
    config = load_config(SMOKE, ["train.use_gpu=true", "train.precision=fp16", "train.epochs=2"])
    best = train_local(config, tmp_path)
    history = load_manifest(best)["metrics"]["history"]
    assert all(math.isfinite(epoch["train_loss"]) for epoch in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    scaler_state = load_checkpoint(best, with_training_state=True).training_state["scaler"]
    assert scaler_state["scale"] > 0


def test_compiled_training_on_cuda_matches_eager():
    eager = step_losses(load_config(SMOKE, ["train.use_gpu=true"]), device="cuda")
    compiled = step_losses(load_config(SMOKE, ["train.use_gpu=true", "train.compile=true"]), device="cuda")
    for eager_step, compiled_step in zip(eager, compiled):
        assert compiled_step == pytest.approx(eager_step, rel=1e-3, abs=1e-4)


def test_gpu_engines_agree_with_fp32(trained_checkpoint):
    reference = InferenceEngine.from_checkpoint(trained_checkpoint, variant="eager", device="cuda")
    engines = {"eager": reference}
    engines.update({name: InferenceEngine.from_checkpoint(trained_checkpoint, variant=name) for name in GPU_VARIANTS})
    windows = held_out_windows(load_checkpoint(trained_checkpoint), 256)
    figures = compare_engines(engines, windows, ExportSettings(repeats_batch1=5, repeats_batch32=3), batch_size=32)
    for entry in figures:
        assert entry.agreement >= 0.99, entry
        assert entry.max_probability_diff <= 0.05, entry
        assert entry.latency_batch1_ms > 0


def test_cuda_graph_engine_equals_the_bf16_engine_per_request(trained_checkpoint):
    bf16 = InferenceEngine.from_checkpoint(trained_checkpoint, variant="bf16")
    graphs = InferenceEngine.from_checkpoint(trained_checkpoint, variant="cuda_graph", graph_buckets=(1, 4))
    bars = [synthetic_bars(bf16.bars_needed + 3, seed=seed) for seed in range(6)]  # 6 > 4: chunked, padded
    budgets = [None, 1, 2, None, 3, 1]
    for expected, got in zip(bf16.predict_bars(bars, budgets), graphs.predict_bars(bars, budgets)):
        assert got.action == expected.action and got.segments == expected.segments
        assert got.confidence == pytest.approx(expected.confidence, abs=1e-3)
    assert graphs.latency.segment_ms > 0 and graphs.segments_for_deadline(1e6) == graphs.max_segments


def test_nvml_reads_this_process_gpu_memory():
    block = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
    reading = MemoryReader(use_gpu=True).read()
    assert reading.gpu_bytes >= block.numel()
    assert reading.guarded_bytes == reading.gpu_bytes


def test_cleanup_releases_cached_cuda_memory():
    device = torch.device("cuda", torch.cuda.current_device())
    block = torch.empty(512 * MiB, dtype=torch.uint8, device=device)
    del block  # freed to torch's cache, still reserved from the driver
    assert torch.cuda.memory_reserved(device) >= 512 * MiB
    cleanup(engine=SimpleNamespace(device=device))
    assert torch.cuda.memory_reserved(device) < 512 * MiB


@pytest.mark.ray
def test_serve_with_a_gpu_replica_answers_over_http(serve_app):
    from hrm_platform.serving.lifecycle import start_server

    gpu_config = serve_app.serve_config.model_copy(update={"replica_gpus": 1.0, "engine_variant": "cuda_graph"})
    try:
        url = start_server(serve_app.checkpoint, gpu_config)
        bars = synthetic_bars(InferenceEngine.from_checkpoint(serve_app.checkpoint).bars_needed + 2, seed=11)
        with httpx.Client(base_url=url, headers=serve_app.headers, timeout=30.0) as client:
            assert client.get("/v1/model").json()["variant"] == "cuda_graph"
            answer = client.post("/v1/predict", json={"bars": np.asarray(bars).tolist()})
        assert answer.status_code == 200, answer.text
        expected = InferenceEngine.from_checkpoint(serve_app.checkpoint, variant="cuda_graph").predict_bars([bars])[0]
        assert answer.json()["action"] == expected.action
    finally:
        start_server(serve_app.checkpoint, serve_app.serve_config)  # the session's CPU app again
