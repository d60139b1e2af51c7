"""Engine variants: the ways one HRM segment can run, one registry entry each.

| variant             | the segment runs as                                          | artefact (export writes it) |
|---------------------|--------------------------------------------------------------|-----------------------------|
| eager               | `HRM.segment`, fp32                                          | -                           |
| jit                 | `torch.jit.trace` of the fp32 segment, frozen                | segment_jit.pt              |
| int8                | `torch.ao` dynamic int8 block `nn.Linear`s (ms at load)      | -                           |
| jit_int8            | `torch.jit.trace` of the int8 segment, frozen                | segment_jit_int8.pt         |
| compiled            | AOTInductor package of the fp32 segment, any batch           | segment_compiled.pt2        |
| compiled_int8       | `torch.compile` of the int8 segment (compiles at load too)   | compile_cache_int8.bin      |
| fp16, bf16          | `HRM.segment` of a half-precision copy, CUDA only            | -                           |
| cuda_graph          | the bf16 ACT loop replayed from CUDA graphs per batch bucket | - (captures at load)        |
| cuda_graph_compiled | the same with the segment torch.compile'd (compiles at load) | -                           |

A `Variant` carries everything about itself: device, dtype, artefact, how export builds it and how a replica
loads it (functions of `serving/segment_builds.py`), whether its ACT loop is captured in CUDA graphs, and
whether export tries it unasked. Adding one is one `register_variant(...)` call:

    register_variant(Variant("eager_copy", "HRM.segment again", "any", torch.float32, plain_segment, plain_segment))

Only the embedding and the initial carry stay in the engine's own HRM (`HRM.embed`, `HRM.initial_carry`);
every variant is a segment function that `act_inference` runs in its ACT loop, or, for the graph variants,
that their captured loop runs (`build_act_runner`). Artefacts are loaded only from a serving directory
whose manifest sha256 has been verified (`serving/manifest.py`): `torch.jit.load` and AOTInductor packages
run code.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hrm_platform.model.act import SegmentFn
from hrm_platform.model.hrm import HRM
from hrm_platform.serving.cuda_graph import CudaGraphAct
from hrm_platform.serving.segment_builds import (
    Example,
    VariantError,
    build_aoti,
    build_compiled_int8,
    build_jit,
    compiled_for_graphs,
    int8_segment,
    load_aoti,
    load_compiled_int8,
    load_jit,
    plain_segment,
)

SegmentBuilder = Callable[[HRM, Example, Path | None], SegmentFn]  # (model, example, artefact path)



@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    device: str  # "cpu", "cuda" or "any" (the engine's device; "any" runs on CPU unless asked otherwise)
    dtype: torch.dtype  # of the engine's HRM copy (embedding, carry)
    build: SegmentBuilder  # export: writes the artefact (when there is one), returns what a replica runs
    load: SegmentBuilder  # replica: from the verified artefact
    artefact: str | None = None  # file under <checkpoint>/serving/
    graph_captured: bool = False  # the ACT loop runs from CUDA graphs (serving/cuda_graph.py)
    explicit_only: bool = False  # export tries it only when named (it compiles at replica start)

    @property
    def artefacts(self) -> tuple[str, ...]:
        return (self.artefact,) if self.artefact else ()

    @property
    def default_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" else "cpu")


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant, replace: bool = False) -> Variant:
    """Add a variant to the registry (every engine, export and replica then knows it by name)."""
    if variant.name in VARIANTS and not replace:
        raise VariantError(f"engine variant {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant
    return variant


for _variant in (
    Variant("eager", "HRM.segment, fp32", "any", torch.float32, plain_segment, plain_segment),
    Variant(
        "jit", "torch.jit.trace of the fp32 segment, frozen", "cpu", torch.float32,
        functools.partial(build_jit, int8=False), load_jit, artefact="segment_jit.pt",
    ),
    Variant("int8", "torch.ao dynamic int8 nn.Linear, eager", "cpu", torch.float32, int8_segment, int8_segment),
    Variant(
        "jit_int8", "torch.jit.trace of the int8 segment, frozen", "cpu", torch.float32,
        functools.partial(build_jit, int8=True), functools.partial(load_jit, int8=True), artefact="segment_jit_int8.pt",
    ),
    Variant(
        "compiled", "AOTInductor package of the fp32 segment", "cpu", torch.float32, build_aoti, load_aoti,
        artefact="segment_compiled.pt2",
    ),
    # Compiles at replica start again even from its cache: over the ready budget on a small CPU, and graph
    # breaks around the quantized ops leave little gain. Tried only when named.
    Variant(
        "compiled_int8", "torch.compile of the int8 segment, compile cache", "cpu", torch.float32,
        build_compiled_int8, load_compiled_int8, artefact="compile_cache_int8.bin", explicit_only=True,
    ),
    Variant("fp16", "HRM.segment of an fp16 copy", "cuda", torch.float16, plain_segment, plain_segment),
    Variant("bf16", "HRM.segment of a bf16 copy", "cuda", torch.bfloat16, plain_segment, plain_segment),
    Variant(
        "cuda_graph", "bf16 ACT loop from CUDA graphs per batch bucket", "cuda", torch.bfloat16,
        plain_segment, plain_segment, graph_captured=True,
    ),
    # Compiles Inductor kernels for its buckets at replica start: far over the ready budget with a cold
    # compile cache. Tried only when named.
    Variant(
        "cuda_graph_compiled", "torch.compile'd bf16 segment, ACT loop from CUDA graphs", "cuda", torch.bfloat16,
        compiled_for_graphs, compiled_for_graphs, graph_captured=True, explicit_only=True,
    ),
):
    register_variant(_variant)


def variant_info(name: str) -> Variant:
    if name not in VARIANTS:
        raise VariantError(f"unknown engine variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variants_for_device(device: torch.device | str) -> list[str]:
    """Every variant that runs on `device` (CPU: eager, jit, int8, jit_int8, compiled, compiled_int8)."""
    kind = torch.device(device).type
    return [name for name, variant in VARIANTS.items() if variant.device in ("any", kind)]


def engine_model(hrm: HRM, name: str, device: torch.device | str) -> HRM:
    """The HRM copy an engine of this variant holds (embedding, initial carry), on its device and dtype."""
    variant = variant_info(name)
    if variant.device not in ("any", torch.device(device).type):
        raise VariantError(f"engine variant {name!r} runs on {variant.device}, not on {device}")
    if variant.device == "cuda" and not torch.cuda.is_available():
        raise VariantError(f"engine variant {name!r} needs CUDA, and no GPU is available")
    model = hrm if variant.dtype == torch.float32 else copy.deepcopy(hrm).to(variant.dtype)
    return model.to(device).eval()


def build_segment(model: HRM, name: str, example: Example, serving_dir: Path) -> SegmentFn:
    """Build the variant from the eager model, writing its artefact into serving_dir (export side)."""
    variant = variant_info(name)
    return variant.build(model, example, serving_dir / variant.artefact if variant.artefact else None)


def load_segment(model: HRM, name: str, serving_dir: Path | None, example: Example) -> SegmentFn:
    """The variant as a replica runs it: from export's artefact (hashes verified by the caller)."""
    variant = variant_info(name)
    if variant.artefact is None:
        return variant.load(model, example, None)
    if serving_dir is None:
        raise VariantError(f"engine variant {name!r} needs the artefacts of `hrm export`; this checkpoint has none")
    path = serving_dir / variant.artefact
    if not path.is_file():
        raise VariantError(f"engine variant {name!r}: {path} is missing; run `hrm export` again")
    return variant.load(model, example, path)


def build_act_runner(model: HRM, name: str, segment_fn: SegmentFn, buckets: tuple[int, ...]) -> CudaGraphAct | None:
    """The captured ACT loop of a graph variant (captures every bucket now), None for the others."""
    if not variant_info(name).graph_captured:
        return None
    return CudaGraphAct(model, segment_fn, buckets, model.config.max_segments)
