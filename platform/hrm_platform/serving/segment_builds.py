"""How each engine variant turns the eager HRM segment into what it runs: the torch machinery behind the
registry in `serving/variants.py` (int8 quantization, TorchScript, AOTInductor, torch.compile).

Every builder and loader takes the engine's model copy, an example `(z_H, z_L, x)` and the artefact's path
(None for a variant without one) and returns a segment function `(z_H, z_L, x) -> (z_H, z_L, action_logits,
quantity, q_halt, q_continue)`. A builder writes its artefact to that path and returns what a replica
loading it runs.

torch 2.13 marks `torch.jit` and `torch.ao.quantization` deprecated; their warnings are silenced here, at
the call sites, so that neither export nor a replica shows them per call.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from hrm_platform.model.act import SegmentFn
from hrm_platform.model.hrm import HRM
from hrm_platform.serving.aoti_gil_free import gil_free

Example = tuple[Tensor, Tensor, Tensor]  # (z_H, z_L, x) of the engine's shapes, device and dtype
MAX_EXPORT_BATCH = 1024  # largest batch the AOTInductor package accepts


class VariantError(RuntimeError):
    """A variant that cannot be built or loaded here; the message says which and why."""


class SegmentModule(nn.Module):
    """`HRM.segment` as a module's forward, so that tracing, quantization and export see one callable."""

    def __init__(self, hrm: HRM) -> None:
        super().__init__()
        self.hrm = hrm

    def forward(self, z_H: Tensor, z_L: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.hrm.segment(z_H, z_L, x)


# ------------------------------------------------------------------------------------------ no artefact


def plain_segment(model: HRM, example: Example, path: Path | None = None) -> SegmentFn:
    """The model's own segment (eager fp32, or the half-precision copy the engine holds)."""
    return model.segment


def int8_segment(model: HRM, example: Example, path: Path | None = None) -> SegmentFn:
    return quantize_int8(SegmentModule(model).eval())


def compiled_for_graphs(model: HRM, example: Example, path: Path | None = None) -> SegmentFn:
    """torch.compile of the segment for capture in CUDA graphs: Inductor's kernels without its own graphs
    (the default mode). The capture's warm-up compiles it: batch 1 specialised, the other buckets share one
    graph with a dynamic batch (torch's automatic dynamic shapes)."""
    return torch.compile(model.segment)


def quantize_int8(segment: SegmentModule) -> nn.Module:
    """Dynamic int8 quantization of the nn.Linear layers of the H and L transformer blocks.

    The heads stay fp32: they are a few hundred weights, and int8 noise in the Q head moved ACT halting
    measurably. Activations are quantized per call with one scale per tensor, so an int8 answer depends
    slightly on the other requests in its batch; the export check therefore runs at the serving batch size.
    """
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    blocks = {"hrm.L_level": qconfig, "hrm.H_level": qconfig}  # one entry when H and L share parameters: fine
    with quiet_torch_deprecations():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(segment), blocks, dtype=torch.qint8)


# --------------------------------------------------------------------------------------------- artefacts


def build_jit(model: HRM, example: Example, path: Path, int8: bool) -> SegmentFn:
    """TorchScript by tracing (the segment has no data-dependent control flow), then frozen: weights and
    attributes folded into the graph, which removes the Python overhead of ~100 small modules per segment.
    Saved to `path` and loaded back, so export measures what a replica loads."""
    segment = SegmentModule(model).eval()
    with quiet_torch_deprecations(), torch.no_grad():
        traced = torch.jit.trace(quantize_int8(segment) if int8 else segment, example, check_trace=False)
        torch.jit.save(torch.jit.freeze(traced.eval()), str(path))
    return load_jit(model, example, path, int8)


def load_jit(model: HRM, example: Example, path: Path, int8: bool = False) -> SegmentFn:
    with quiet_torch_deprecations():
        return torch.jit.load(str(path), map_location="cpu")


def build_aoti(model: HRM, example: Example, package: Path) -> SegmentFn:
    """AOTInductor package of the fp32 segment, any batch up to MAX_EXPORT_BATCH."""
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with torch.no_grad(), quiet_torch_deprecations():
        exported = torch.export.export(
            SegmentModule(model).eval(), example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch})
        )
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
    return load_aoti(model, example, package)


def load_aoti(model: HRM, example: Example, package: Path) -> SegmentFn:
    """torch's runner of the package, checked against and replaced by the same library called with the GIL
    released (serving/aoti_gil_free.py), so a replica's event loop runs while a segment computes."""
    with quiet_torch_deprecations():
        torch_runner = torch._inductor.aoti_load_package(str(package))
    return gil_free(torch_runner, package, example)


def build_compiled_int8(model: HRM, example: Example, cache_file: Path) -> SegmentFn:
    compiled = load_compiled_int8(model, example, None)
    with quiet_torch_deprecations():
        artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        raise VariantError("compiled_int8: torch.compile produced no cache artefacts to save")
    cache_file.write_bytes(artifacts[0])
    return compiled


def load_compiled_int8(model: HRM, example: Example, cache_file: Path | None) -> SegmentFn:
    """torch.compile of the int8 segment with a dynamic batch, from the saved compile cache when given;
    the first call (here) compiles."""
    if cache_file is not None:
        with quiet_torch_deprecations():
            torch.compiler.load_cache_artifacts(cache_file.read_bytes())
    compiled = torch.compile(quantize_int8(SegmentModule(model).eval()), dynamic=True)
    with torch.no_grad(), quiet_torch_deprecations():
        compiled(*example)
    return compiled


@contextlib.contextmanager
def quiet_torch_deprecations() -> Iterator[None]:
    """Silence torch.jit / torch.ao / torch.export deprecation and tracer warnings for the calls inside only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.(jit|ao)")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
