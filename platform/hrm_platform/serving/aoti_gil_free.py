"""An AOTInductor package's segment called with the GIL released, so a replica's event loop runs beside it.

    segment = gil_free(torch._inductor.aoti_load_package(path), path, example)   # or torch's runner, warned
    z_H, z_L, logits, quantity, q_halt, q_continue = segment(z_H, z_L, x)

Why: torch's runner for a package (`AOTIModelPackageLoader.boxed_run`) keeps the GIL for each call's whole
run, so while the inference thread computes a segment the event loop can neither parse nor answer
(`python -m benchmarks.engine_gil`). The package's model library exports a C entry point,
`AOTInductorModelContainerRun` (torch/csrc/inductor/aoti_runtime/interface.h). ctypes releases the GIL for
every foreign call it makes, so calling that entry point through ctypes runs the same kernels on the same
weights while other threads hold the GIL.

Same numbers: `gil_free` runs both on the example inputs and keeps the ctypes call only if every output is
equal to torch's, element for element. Anything else (an archive with another layout, a missing symbol, an
error code, a difference) logs a warning and returns torch's runner, which is slower for a replica under load
but gives the same answers.

torch's private API is used here only: `torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors` and
`alloc_tensors_by_stealing_from_void_ptrs` turn tensors into the C ABI's owned tensor handles and back
(the C side takes ownership of the inputs' handles; we take ownership of the outputs').
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

MODEL_LIBRARY_SUFFIX = ".wrapper.so"  # the compiled model inside a package: <name>/data/aotinductor/model/
CONCURRENT_RUNS = 2  # model instances in the container: two threads calling one engine both compute, not queue

_void_p = ctypes.c_void_p


class GilFreeAOTIError(RuntimeError):
    """The package cannot be called through its C entry point here; the message says why."""


class GilFreeAOTI:
    """The model library of one AOTInductor package, called through its C ABI: `segment(*inputs)` -> tuple of
    output tensors, in the order the exported function returns them."""

    def __init__(self, package: Path, concurrent_runs: int = CONCURRENT_RUNS) -> None:
        self.package = Path(package)
        self._library = _open_model_library(self.package)
        self._container = _void_p()
        self._check(
            self._library.AOTInductorModelContainerCreateWithDevice(
                ctypes.byref(self._container), ctypes.c_size_t(concurrent_runs), b"cpu", None
            ),
            "create the model container",
        )
        weakref.finalize(self, self._library.AOTInductorModelContainerDelete, self._container)
        self.num_inputs = self._count("AOTInductorModelContainerGetNumInputs")
        self.num_outputs = self._count("AOTInductorModelContainerGetNumOutputs")
        self._run = self._library.AOTInductorModelContainerRun
        self._run.argtypes = [_void_p, ctypes.POINTER(_void_p), ctypes.c_size_t, ctypes.POINTER(_void_p),
                              ctypes.c_size_t, _void_p, _void_p]
        self._run.restype = ctypes.c_int

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """inputs: the exported function's tensors (contiguous, its dtypes, on the CPU) -> its outputs."""
        if len(inputs) != self.num_inputs:
            raise ValueError(f"{self.package.name} takes {self.num_inputs} tensors, got {len(inputs)}")
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(list(inputs))  # owned by the C side from here
        input_array = (_void_p * len(handles))(*[_capsule_pointer(handle, None) for handle in handles])
        output_array = (_void_p * self.num_outputs)()
        error = self._run(self._container, input_array, len(handles), output_array, self.num_outputs, None, None)
        self._check(error, "run")
        outputs = [_new_capsule(pointer, None, None) for pointer in output_array]
        return tuple(torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(outputs))

    def _count(self, function: str) -> int:
        count = ctypes.c_size_t()
        self._check(getattr(self._library, function)(self._container, ctypes.byref(count)), function)
        return count.value

    def _check(self, error: int, what: str) -> None:
        if error != 0:
            raise GilFreeAOTIError(f"{self.package.name}: the model library failed to {what} (error code {error})")


def gil_free(torch_runner: Callable[..., Sequence[Tensor]], package: Path,
             example: Sequence[Tensor]) -> Callable[..., Sequence[Tensor]]:
    """The package called through its C entry point if it gives torch's runner's outputs exactly on `example`;
    else `torch_runner`, with a warning that says why."""
    try:
        segment = GilFreeAOTI(package)
        with torch.no_grad():
            ours, theirs = segment(*example), torch_runner(*example)
        if len(ours) != len(theirs) or not all(torch.equal(a, b) for a, b in zip(ours, theirs)):
            raise GilFreeAOTIError(f"{package.name}: the C entry point's outputs differ from torch's runner's")
    except (GilFreeAOTIError, OSError, AttributeError, ValueError, RuntimeError, zipfile.BadZipFile) as error:
        logger.warning("%s; using torch's runner, which keeps the GIL while it computes", error)
        return torch_runner
    return segment


def _open_model_library(package: Path) -> ctypes.CDLL:
    """dlopen the package's one model library from a private copy, removed at once (the mapping stays)."""
    with zipfile.ZipFile(package) as archive:
        libraries = [name for name in archive.namelist() if name.endswith(MODEL_LIBRARY_SUFFIX)]
        if len(libraries) != 1 or any("/data/weights/" in name for name in archive.namelist()):
            raise GilFreeAOTIError(
                f"{package.name}: expected one model library with its weights inside, found {libraries or 'none'}"
            )
        directory = tempfile.mkdtemp(prefix="hrm-aoti-")
        try:
            return ctypes.CDLL(archive.extract(libraries[0], directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# torch's handle conversions speak PyCapsules holding the raw handle (no capsule name). Own prototypes, so that
# ctypes.pythonapi's shared function objects keep their settings.
_capsule_pointer = ctypes.PYFUNCTYPE(_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
_new_capsule = ctypes.PYFUNCTYPE(ctypes.py_object, _void_p, ctypes.c_char_p, _void_p)(
    ("PyCapsule_New", ctypes.pythonapi)
)
