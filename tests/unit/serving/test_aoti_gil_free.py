"""The compiled engine's segment runs through the package's C entry point with the GIL released, answers as
torch's runner does, and falls back to torch's runner when it cannot."""

from __future__ import annotations

import logging
import threading
import time
import zipfile

import psutil
import pytest
import torch

from hrm_platform.serving.aoti_gil_free import GilFreeAOTI, gil_free
from hrm_platform.serving.engine import InferenceEngine, example_segment_inputs, synthetic_bars
from hrm_platform.serving.manifest import serving_dir


@pytest.fixture(scope="module")
def package(exported_arch_checkpoints):
    return serving_dir(exported_arch_checkpoints["hrm"]) / "segment_compiled.pt2"


@pytest.fixture(scope="module")
def engine(exported_arch_checkpoints):
    return InferenceEngine.from_checkpoint(exported_arch_checkpoints["hrm"], variant="compiled")


def _torch_runner(package):
    return torch._inductor.aoti_load_package(str(package))


def _python_speed_beside(segment, inputs, seconds: float = 0.4) -> float:
    """Pure-Python steps per second in this thread while another thread calls `segment` back to back, over the
    same count with that thread idle: near 1 when the segment lets go of the GIL, near 0 when it keeps it."""

    def count_for(duration: float) -> int:
        steps, deadline = 0, time.perf_counter() + duration
        while time.perf_counter() < deadline:
            steps += 1
        return steps

    alone = count_for(seconds)
    stop = threading.Event()

    def call_back_to_back() -> None:
        with torch.no_grad():
            while not stop.is_set():
                segment(*inputs)

    worker = threading.Thread(target=call_back_to_back)
    worker.start()
    try:
        beside = count_for(seconds)
    finally:
        stop.set()
        worker.join()
    return beside / alone


def test_the_compiled_engine_runs_its_segment_without_the_gil_and_answers_as_torchs_runner(engine, package):
    assert isinstance(engine.segment_fn, GilFreeAOTI)
    bars = [synthetic_bars(engine.bars_needed, seed=seed) for seed in range(12)]
    ours = engine.predict_bars(bars, [engine.max_segments] * 12)
    engine_with_torchs_runner = InferenceEngine.from_checkpoint(engine.checkpoint_dir, variant="compiled")
    engine_with_torchs_runner.segment_fn = _torch_runner(package)
    assert ours == engine_with_torchs_runner.predict_bars(bars, [engine.max_segments] * 12)

    inputs = example_segment_inputs(engine.model, batch_size=16)
    ours_beside = _python_speed_beside(engine.segment_fn, inputs)
    torchs_beside = _python_speed_beside(engine_with_torchs_runner.segment_fn, inputs)
    assert ours_beside > 0.3, (ours_beside, torchs_beside)
    assert ours_beside > 3 * torchs_beside, (ours_beside, torchs_beside)


def test_each_batch_size_gives_torchs_outputs_exactly_and_no_memory_is_kept(engine, package):
    segment, reference = GilFreeAOTI(package), _torch_runner(package)
    with torch.no_grad():
        for batch_size in (1, 3, 33):
            z_H, z_L, x = example_segment_inputs(engine.model, batch_size=batch_size)
            x = x + torch.randn_like(x)
            ours, theirs = segment(z_H, z_L, x), reference(z_H, z_L, x)
            assert len(ours) == len(theirs) == segment.num_outputs == 6
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        inputs = example_segment_inputs(engine.model, batch_size=4)
        for _ in range(500):
            segment(*inputs)
        before = psutil.Process().memory_info().rss
        for _ in range(5_000):  # each call hands the inputs' handles over and takes the outputs' back
            segment(*inputs)
        grown_mib = (psutil.Process().memory_info().rss - before) / 2**20
    assert grown_mib < 8, grown_mib


def test_a_wrong_number_of_inputs_is_refused(engine, package):
    z_H, z_L, x = example_segment_inputs(engine.model, batch_size=2)
    with pytest.raises(ValueError, match="takes 3 tensors, got 2"):
        GilFreeAOTI(package)(z_H, z_L)


def test_torchs_runner_is_kept_with_a_warning_when_the_package_cannot_be_called_or_differs(
    engine, package, tmp_path, caplog
):
    example = example_segment_inputs(engine.model, batch_size=2)
    torch_runner = _torch_runner(package)
    not_a_package = tmp_path / "other.pt2"
    with zipfile.ZipFile(not_a_package, "w") as archive:
        archive.writestr("other/data/weights/w0", b"\0" * 8)
    with caplog.at_level(logging.WARNING, logger="hrm_platform.serving.aoti_gil_free"):
        assert gil_free(torch_runner, not_a_package, example) is torch_runner
    assert "expected one model library" in caplog.text and "using torch's runner" in caplog.text

    def differs(*inputs):
        return tuple(output + 1 for output in torch_runner(*inputs))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hrm_platform.serving.aoti_gil_free"):
        assert gil_free(differs, package, example) is differs
    assert "differ from torch's runner's" in caplog.text

    assert isinstance(gil_free(torch_runner, package, example), GilFreeAOTI)
