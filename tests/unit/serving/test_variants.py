"""A new engine variant is one registry entry: the engine, export and the replica's loader then know it."""

from __future__ import annotations

import shutil

import pytest
import torch

from hrm_platform.config import ConfigError, ServeConfig
from hrm_platform.serving.app import check_engine_variant
from hrm_platform.serving.engine import InferenceEngine, synthetic_bars
from hrm_platform.serving.export import ExportSettings, export_engine
from hrm_platform.serving.replica import load_served_model
from hrm_platform.serving.segment_builds import plain_segment
from hrm_platform.serving.variants import VARIANTS, Variant, VariantError, register_variant


class CountingSegment:
    """The eager segment, counting its calls (proof that the toy variant, not eager, answered)."""

    calls = 0

    def __init__(self, model) -> None:
        self.segment = model.segment

    def __call__(self, z_H, z_L, x):
        CountingSegment.calls += 1
        return self.segment(z_H, z_L, x)


def _counting(model, example, path=None):
    return CountingSegment(model)


@pytest.fixture
def toy_variant():
    variant = register_variant(Variant("toy", "eager, counted", "cpu", torch.float32, _counting, _counting))
    yield variant
    VARIANTS.pop("toy")


def test_a_registered_variant_is_served_and_exported(toy_variant, trained_checkpoint, tmp_path):
    served = load_served_model(trained_checkpoint, ServeConfig(engine_variant="toy"))  # what a replica runs
    eager = InferenceEngine.from_checkpoint(trained_checkpoint, variant="eager")
    bars = [synthetic_bars(eager.bars_needed + 4, seed=seed) for seed in range(3)]
    before = CountingSegment.calls
    answers = served.engine.predict_bars(bars)
    assert served.summary.variant == "toy" and CountingSegment.calls > before
    assert [a.action for a in answers] == [e.action for e in eager.predict_bars(bars)]

    copy = tmp_path / "checkpoint"
    shutil.copytree(trained_checkpoint, copy)
    report = export_engine(copy, variants=["toy"], settings=ExportSettings(measure_ready=False, repeats_batch1=3))
    assert report.figures("toy").agreement == 1.0


def test_registering_a_name_twice_is_refused(toy_variant):
    with pytest.raises(VariantError, match="already registered"):
        register_variant(Variant("toy", "again", "cpu", torch.float32, plain_segment, plain_segment))


def test_an_unknown_serving_variant_is_a_config_error():
    with pytest.raises(
        ConfigError, match="serve.engine_variant='fastest': unknown engine variant 'fastest'; known: eager"
    ):
        check_engine_variant(ServeConfig(engine_variant="fastest"))
