"""train.compile (torch.compile of the training segment) and the throughput figures each epoch reports."""

from __future__ import annotations

import pytest
import torch

from hrm_platform.checkpoint import load_manifest
from hrm_platform.data.features import FEATURE_NAMES
from hrm_platform.model.flops import training_flops_per_sample_segment
from hrm_platform.training.local import train_local
from hrm_platform.training.state import build_model, new_training_run
from tests.training_steps import N_FEATURES, step_losses


@pytest.mark.slow
def test_compiled_training_matches_eager_on_cpu(smoke_config):
    eager = step_losses(smoke_config)
    smoke_config.train.compile = True
    compiled_run = new_training_run(build_model(smoke_config, N_FEATURES), smoke_config, torch.device("cpu"), 1)
    assert compiled_run.step_model is not compiled_run.model  # the compiled wrapper, over the same parameters
    assert next(iter(compiled_run.step_model.parameters())) is next(iter(compiled_run.model.parameters()))
    compiled = step_losses(smoke_config)
    assert len(compiled) == len(eager)
    for eager_step, compiled_step in zip(eager, compiled):
        assert compiled_step == pytest.approx(eager_step, rel=1e-4, abs=1e-5)


def test_each_epoch_reports_model_flops_and_throughput(smoke_config, tmp_path):
    smoke_config.train.epochs = 1
    smoke_config.train.max_train_batches = 3
    history = load_manifest(train_local(smoke_config, tmp_path))["metrics"]["history"]
    epoch = history[0]
    per_segment = training_flops_per_sample_segment(smoke_config.model, smoke_config.data.window, len(FEATURE_NAMES))
    assert epoch["model_flops_per_sample"] == pytest.approx(per_segment * epoch["segments_run_per_batch"])
    expected_tflops = epoch["model_flops_per_sample"] * epoch["samples"] / epoch["epoch_time_s"] / 1e12
    assert epoch["achieved_tflops"] == pytest.approx(expected_tflops)
    assert epoch["mfu"] is None  # no published peak for a CPU
    assert epoch["distributed_backend"] == "none"
