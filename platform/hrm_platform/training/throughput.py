"""Training throughput in model FLOPs: achieved TFLOP/s and MFU against the device's dense bf16 peak.

    figures = throughput_figures(flops=3.2e15, seconds=10.0, device=torch.device("cuda", 0), world_size=1)
    figures["achieved_tflops"], figures["mfu"]      # 320.0, 0.32 on an H100/H200 (989 TFLOP/s peak)

MFU (model FLOPs utilisation) = model FLOPs (`model/flops.py`, no recomputation) per second over the peak
of every device together. Peaks are the vendors' published dense (no sparsity) bf16 tensor-core figures;
`train.peak_tflops` overrides the lookup for a device not listed. On CPU there is no MFU (no meaningful
published peak), only TFLOP/s.
"""

from __future__ import annotations

import torch

# Published dense bf16 tensor-core peaks (TFLOP/s), matched as substrings of torch.cuda.get_device_name(),
# most specific first.
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)


def device_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """Dense bf16 peak of one CUDA device, `override` when given; None on CPU or for an unlisted GPU."""
    if override is not None:
        return override
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS if key in name), None)


def throughput_figures(
    flops: float, seconds: float, device: torch.device, world_size: int, peak_override: float | None = None
) -> dict[str, float | None]:
    """achieved_tflops (all ranks together) and mfu (None without a known peak) for `flops` in `seconds`."""
    achieved = flops / seconds / 1e12 if seconds > 0 else None
    peak = device_peak_tflops(device, peak_override)
    mfu = achieved / (peak * world_size) if achieved is not None and peak else None
    return {"achieved_tflops": achieved, "mfu": mfu, "peak_tflops_per_device": peak}
