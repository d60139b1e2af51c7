"""Training-step throughput in one process: warm-up batches (compilation), then a timed epoch of N batches.

    python -m benchmarks.gpu_train_step --config jobs/configs/gpu.yaml --batches 40 train.compile=true

Prints one JSON line: samples/s and segments run per batch from the epoch's own measure (`train_epoch`),
the warm-up's seconds, and optionally writes a torch-profiler table (`--profile FILE`) and the trained
checkpoint (`--save DIR`). It uses only functions that every revision has (where an older one kept them all
in `training/epoch.py`, it imports them from there), so `benchmarks/gpu_check.py` can run it against an
older source root (PYTHONPATH) for a before/after figure.
Runs on CUDA when torch sees a GPU, else on CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hrm_platform.config import load_config
from hrm_platform.data.dataset import build_datasets

try:  # this tree: the epoch loop reads a TrainingData (training/data_source.py)
    from hrm_platform.training.data_source import InMemoryData
except ImportError:  # an older source root: train_epoch(run, dataset, sampler, config, collective)
    InMemoryData = None

try:  # this tree: one module per concept
    from hrm_platform.training.batches import batches_per_epoch, make_sampler
    from hrm_platform.training.collective import Collective
    from hrm_platform.training.epoch import train_epoch
    from hrm_platform.training.resume import capture_rng_state, seed_rank, write_checkpoint
    from hrm_platform.training.state import build_model, new_training_run
except ImportError:  # an older source root (--baseline of gpu_check), where training/epoch.py held them all
    from hrm_platform.training.epoch import (  # type: ignore[no-redef]
        Collective,
        batches_per_epoch,
        build_model,
        capture_rng_state,
        make_sampler,
        new_training_run,
        seed_rank,
        train_epoch,
        write_checkpoint,
    )

PROFILE_BATCHES = 3
PROFILE_ROWS = 25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/configs/gpu.yaml")
    parser.add_argument("--batches", type=int, default=40, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (compilation, cuDNN/cuBLAS)")
    parser.add_argument("--profile", type=Path, default=None, help="write a torch.profiler table of a few batches")
    parser.add_argument("--save", type=Path, default=None, help="write the trained checkpoint here")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    torch.set_num_threads(config.train.torch_threads)
    bundle = build_datasets(config.data)
    collective = Collective(device=device)
    sampler = make_sampler(bundle.train, collective, config.train.seed)
    steps = batches_per_epoch(len(sampler), config.train.batch_size, args.warmup + args.batches)
    run = new_training_run(build_model(config, bundle.train.n_features).to(device), config, device, steps)
    seed_rank(config.train.seed, rank=0)

    started = time.perf_counter()
    _epoch(run, bundle, sampler, config, collective, args.warmup)
    warmup_s = time.perf_counter() - started
    metrics = _epoch(run, bundle, sampler, config, collective, args.batches)
    if args.profile is not None:
        _profile(run, bundle, sampler, config, collective, device, args.profile)
    if args.save is not None:
        write_checkpoint(args.save, run, config, bundle, metrics, [capture_rng_state()])
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch_size": config.train.batch_size,
        "batches": args.batches,
        "warmup_s": warmup_s,
        "samples_per_s": metrics["samples_per_s"],
        "segments_run_per_batch": metrics["segments_run_per_batch"],
        "epoch_time_s": metrics["epoch_time_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "train_loss": metrics["train_loss"],
    }))
    return 0


def _epoch(run, bundle, sampler, config, collective, batches: int) -> dict:
    config.train.max_train_batches = batches
    if InMemoryData is None:
        return train_epoch(run, bundle.train, sampler, config, collective)
    return train_epoch(run, InMemoryData(bundle, collective, config), config, collective)


def _profile(run, bundle, sampler, config, collective, device: torch.device, path: Path) -> None:
    """Kernel-level breakdown of a few batches, sorted by device time (CPU time on a CPU run)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        _epoch(run, bundle, sampler, config, collective, PROFILE_BATCHES)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=PROFILE_ROWS, max_name_column_width=70)
    path.write_text(f"{PROFILE_BATCHES} batches, sorted by {sort_by}\n{table}\n")


if __name__ == "__main__":
    raise SystemExit(main())
