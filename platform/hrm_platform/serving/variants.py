"""Engine variants: the ways one HRM segment can run, how export builds them and how a replica loads them.

| variant       | the segment runs as                                   | built by      | a replica loads       |
|---------------|-------------------------------------------------------|---------------|-----------------------|
| eager         | `HRM.segment`, fp32                                   | -             | -                     |
| jit           | `torch.jit.trace` of the fp32 segment, frozen         | export        | segment_jit.pt        |
| int8          | `torch.ao` dynamic int8 block `nn.Linear`s, eager     | replica (ms)  | -                     |
| jit_int8      | `torch.jit.trace` of the int8 segment, frozen         | export        | segment_jit_int8.pt   |
| compiled      | AOTInductor package of the fp32 segment, any batch    | export (~1 m) | segment_compiled.pt2  |
| compiled_int8 | `torch.compile` of the int8 segment                   | export        | its compile cache,    |
|               |                                                       |               | then compiles again   |
| fp16, bf16    | `HRM.segment` of a half-precision copy, CUDA only     | replica       | -                     |
| cuda_graph    | the bf16 ACT loop replayed from CUDA graphs, one pair | replica (~1 s)| -                     |
|               | per batch bucket (serving/cuda_graph.py), CUDA only   |               |                       |
| cuda_graph_   | the same with the segment torch.compile'd first       | replica       | - (compiles at start; |
|   compiled    | (Inductor fuses the norms, rotary and activations)    | (compiles)    | Inductor's disk cache)|

Only the embedding and the initial carry stay in the engine's own HRM (`HRM.embed`, `HRM.initial_carry`);
every variant is a function `(z_H, z_L, x) -> (z_H, z_L, action_logits, quantity, q_halt, q_continue)` that
`act_inference` runs in its ACT loop; the cuda_graph variants run that function inside their captured ACT
loop instead (`build_act_runner`). Artefacts are loaded only from a serving directory whose manifest
sha256 has been verified (see `serving/export.py`): `torch.jit.load` and AOTInductor packages run code.

torch 2.13 marks `torch.jit` and `torch.ao.quantization` deprecated; their warnings are silenced here, at
the call sites, so that neither export nor a replica shows them per call.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hrm_platform.model.hrm import HRM
from hrm_platform.serving.cuda_graph import CudaGraphAct

SegmentFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class VariantInfo:
    name: str
    description: str
    device: str  # "cpu", "cuda" or "any" (the engine's device)
    dtype: torch.dtype  # of the engine's HRM copy (embedding, carry)
    artefacts: tuple[str, ...] = ()  # files under <checkpoint>/serving/ that export writes and a replica loads
    graph_captured: bool = False  # the ACT loop runs from CUDA graphs (serving/cuda_graph.py)


VARIANTS: dict[str, VariantInfo] = {
    info.name: info
    for info in (
        VariantInfo("eager", "HRM.segment, fp32", "any", torch.float32),
        VariantInfo("jit", "torch.jit.trace of the fp32 segment, frozen", "cpu", torch.float32, ("segment_jit.pt",)),
        VariantInfo("int8", "torch.ao dynamic int8 nn.Linear, eager", "cpu", torch.float32),
        VariantInfo(
            "jit_int8", "torch.jit.trace of the int8 segment, frozen", "cpu", torch.float32, ("segment_jit_int8.pt",)
        ),
        VariantInfo(
            "compiled", "AOTInductor package of the fp32 segment", "cpu", torch.float32, ("segment_compiled.pt2",)
        ),
        VariantInfo(
            "compiled_int8",
            "torch.compile of the int8 segment, compile cache",
            "cpu",
            torch.float32,
            ("compile_cache_int8.bin",),
        ),
        VariantInfo("fp16", "HRM.segment of an fp16 copy", "cuda", torch.float16),
        VariantInfo("bf16", "HRM.segment of a bf16 copy", "cuda", torch.bfloat16),
        VariantInfo(
            "cuda_graph", "bf16 ACT loop from CUDA graphs per batch bucket", "cuda", torch.bfloat16, graph_captured=True
        ),
        VariantInfo(
            "cuda_graph_compiled",
            "torch.compile'd bf16 segment, ACT loop from CUDA graphs",
            "cuda",
            torch.bfloat16,
            graph_captured=True,
        ),
    )
}
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


def variant_info(name: str) -> VariantInfo:
    if name not in VARIANTS:
        raise VariantError(f"unknown engine variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variants_for_device(device: torch.device | str) -> list[str]:
    """Every variant that runs on `device` (CPU: eager, jit, int8, jit_int8, compiled, compiled_int8)."""
    kind = torch.device(device).type
    return [name for name, info in VARIANTS.items() if info.device in ("any", kind)]


def engine_model(hrm: HRM, name: str, device: torch.device | str) -> HRM:
    """The HRM copy an engine of this variant holds (embedding, initial carry), on its device and dtype."""
    info = variant_info(name)
    if info.device not in ("any", torch.device(device).type):
        raise VariantError(f"engine variant {name!r} runs on {info.device}, not on {device}")
    if info.device == "cuda" and not torch.cuda.is_available():
        raise VariantError(f"engine variant {name!r} needs CUDA, and no GPU is available")
    model = hrm if info.dtype == torch.float32 else copy.deepcopy(hrm).to(info.dtype)
    return model.to(device).eval()


def build_segment(model: HRM, name: str, example: tuple[Tensor, Tensor, Tensor], serving_dir: Path) -> SegmentFn:
    """Build the variant from the eager model and write its artefacts into serving_dir (export side)."""
    info = variant_info(name)
    segment = SegmentModule(model).eval()
    if name in ("eager", "fp16", "bf16", "cuda_graph"):
        return model.segment
    if name == "cuda_graph_compiled":
        return compile_for_graphs(model)
    if name == "int8":
        return quantize_int8(segment)
    if name in ("jit", "jit_int8"):
        traced = trace_and_freeze(quantize_int8(segment) if name == "jit_int8" else segment, example)
        with _quiet_torch_deprecations():
            torch.jit.save(traced, str(serving_dir / info.artefacts[0]))
        return traced
    if name == "compiled":
        return _build_aoti(segment, example, serving_dir / info.artefacts[0])
    if name == "compiled_int8":
        return _build_compiled_int8(segment, example, serving_dir / info.artefacts[0])
    raise VariantError(f"no builder for engine variant {name!r}")


def load_segment(model: HRM, name: str, serving_dir: Path | None, example: tuple[Tensor, Tensor, Tensor]) -> SegmentFn:
    """The variant as a replica runs it: from export's artefacts (hashes verified by the caller)."""
    info = variant_info(name)
    if name in ("eager", "fp16", "bf16", "cuda_graph"):
        return model.segment
    if name == "cuda_graph_compiled":
        return compile_for_graphs(model)
    if name == "int8":
        return quantize_int8(SegmentModule(model).eval())
    if serving_dir is None:
        raise VariantError(f"engine variant {name!r} needs the artefacts of `hrm export`; this checkpoint has none")
    path = serving_dir / info.artefacts[0]
    if not path.is_file():
        raise VariantError(f"engine variant {name!r}: {path} is missing; run `hrm export` again")
    if name in ("jit", "jit_int8"):
        with _quiet_torch_deprecations():
            return torch.jit.load(str(path), map_location="cpu")
    if name == "compiled":
        with _quiet_torch_deprecations():
            return torch._inductor.aoti_load_package(str(path))
    if name == "compiled_int8":
        with _quiet_torch_deprecations():
            torch.compiler.load_cache_artifacts(path.read_bytes())
        return _compile_int8(SegmentModule(model).eval(), example)
    raise VariantError(f"no loader for engine variant {name!r}")


def build_act_runner(model: HRM, name: str, segment_fn: SegmentFn, buckets: tuple[int, ...]) -> CudaGraphAct | None:
    """The captured ACT loop of a graph variant (captures every bucket now), None for the others."""
    if not variant_info(name).graph_captured:
        return None
    return CudaGraphAct(model, segment_fn, buckets, model.config.max_segments)


def compile_for_graphs(model: HRM) -> SegmentFn:
    """torch.compile of the segment for capture in CUDA graphs: Inductor's kernels without its own graphs
    (the default mode). The capture's warm-up compiles it: batch 1 specialised, the other buckets share one
    graph with a dynamic batch (torch's automatic dynamic shapes)."""
    return torch.compile(model.segment)


def quantize_int8(segment: SegmentModule) -> nn.Module:
    """Dynamic int8 quantization of the nn.Linear layers of the H and L transformer blocks.

    The heads stay fp32: they are a few hundred weights, and int8 noise in the Q head moved ACT halting
    (segments agreement with fp32 on held-out windows 98.2 % with int8 heads, 99.8 % without). Activations
    are quantized per call with one scale per tensor, so an int8 answer depends slightly on the other requests
    in its batch (alone vs in a batch of 32: probabilities within 0.003 on the trained smoke model, 0.008 on an
    untrained one); the export check therefore runs at the serving batch size.
    """
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    blocks = {"hrm.L_level": qconfig, "hrm.H_level": qconfig}  # one entry when H and L share parameters: fine
    with _quiet_torch_deprecations():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(segment), blocks, dtype=torch.qint8)


def trace_and_freeze(segment: nn.Module, example: tuple[Tensor, Tensor, Tensor]) -> torch.jit.ScriptModule:
    """TorchScript by tracing (the segment has no data-dependent control flow), then frozen: weights and
    attributes folded into the graph, which removes the Python overhead of ~100 small modules per segment."""
    with _quiet_torch_deprecations(), torch.no_grad():
        traced = torch.jit.trace(segment.eval(), example, check_trace=False)
        return torch.jit.freeze(traced.eval())


def _build_aoti(segment: nn.Module, example: tuple[Tensor, Tensor, Tensor], package: Path) -> SegmentFn:
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with torch.no_grad(), _quiet_torch_deprecations():
        exported = torch.export.export(segment, example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
    return torch._inductor.aoti_load_package(str(package))


def _build_compiled_int8(segment: nn.Module, example: tuple[Tensor, Tensor, Tensor], cache_file: Path) -> SegmentFn:
    compiled = _compile_int8(segment, example)
    with _quiet_torch_deprecations():
        artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        raise VariantError("compiled_int8: torch.compile produced no cache artefacts to save")
    cache_file.write_bytes(artifacts[0])
    return compiled


def _compile_int8(segment: nn.Module, example: tuple[Tensor, Tensor, Tensor]) -> SegmentFn:
    """torch.compile of the int8 segment with a dynamic batch; the first call (here) compiles."""
    compiled = torch.compile(quantize_int8(segment), dynamic=True)
    with torch.no_grad(), _quiet_torch_deprecations():
        compiled(*example)
    return compiled


@contextlib.contextmanager
def _quiet_torch_deprecations() -> Iterator[None]:
    """Silence torch.jit / torch.ao / torch.export deprecation and tracer warnings for the calls inside only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.(jit|ao)")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
