"""Attention kernels side by side on the GPU, at the GPU preset's shapes (GPU only).

    python -m benchmarks.sdpa_backends

For (batch, heads, tokens, head dim) = (512, 8, 65, 32) forward and forward+backward (training) and
(1, 8, 65, 32) forward (batch-1 serving), in bf16: mean microseconds per call of
`scaled_dot_product_attention` under each SDPA backend (cuDNN, flash, memory-efficient, math) and of an
explicit softmax(QK^T)V compiled by torch.compile. Every timing synchronises the device.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = (((512, 8, 65, 32), False), ((512, 8, 65, 32), True), ((1, 8, 65, 32), False))
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
CALLS = 30


def explicit_attention(query, key, value):
    scores = (query @ key.transpose(-2, -1)) * query.shape[-1] ** -0.5
    return torch.softmax(scores.float(), dim=-1).to(query.dtype) @ value


def microseconds(attention, shape: tuple[int, ...], backward: bool) -> float:
    query, key, value = (
        torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=backward) for _ in range(3)
    )

    def once() -> None:
        out = attention(query, key, value)
        if backward:
            out.sum().backward()

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(CALLS):
        once()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / CALLS * 1e6


def main() -> int:
    if not torch.cuda.is_available():
        print("sdpa_backends: no GPU visible to torch; nothing to measure", file=sys.stderr)
        return 2
    compiled = torch.compile(explicit_attention)
    for shape, backward in SHAPES:
        row: dict[str, str] = {}
        for name, backend in BACKENDS.items():
            try:
                with sdpa_kernel(backend):
                    row[name] = f"{microseconds(F.scaled_dot_product_attention, shape, backward):.1f}"
            except RuntimeError as error:  # a backend that does not support this shape or device
                row[name] = f"unavailable ({type(error).__name__})"
        row["compiled explicit"] = f"{microseconds(compiled, shape, backward):.1f}"
        print(f"{shape} {'forward+backward' if backward else 'forward'} us/call: {row}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
