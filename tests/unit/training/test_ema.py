"""The weights' moving average (train.ema_decay): it is the average it claims, it resumes bit for bit, and
validation and inference use it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hrm_platform.checkpoint import (
    EMA_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    load_checkpoint,
    load_manifest,
    load_model,
    save_checkpoint,
)
from hrm_platform.config import PlatformConfig
from hrm_platform.data.dataset import build_datasets
from hrm_platform.data.features import FEATURE_NAMES
from hrm_platform.model.hrm import HRM, unwrap_model
from hrm_platform.training import epoch as epoch_module
from hrm_platform.training import validation as validation_module
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import InMemoryData
from hrm_platform.training.epoch import train_epoch
from hrm_platform.training.local import train_local
from hrm_platform.training.state import build_model, new_training_run
from hrm_platform.training.validation import validate
from tests.unit.test_checkpoint import _feature_spec
from tests.unit.training.test_checkpoint_resume import _history, short_config  # noqa: F401 (a fixture)

WINDOW = 8  # of the hand-made checkpoints
DECAY = 0.5  # large steps, so the average after a few batches is far from both the first and the last weights


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in unwrap_model(model).named_parameters()}


@pytest.fixture
def ema_config(smoke_config: PlatformConfig) -> PlatformConfig:
    smoke_config.train.max_train_batches = 3
    smoke_config.train.ema_decay = DECAY
    return smoke_config


def _trained_run(config: PlatformConfig, monkeypatch: pytest.MonkeyPatch | None = None):
    """One epoch of `max_train_batches` batches on CPU; with `monkeypatch`, also the weights after each batch."""
    bundle = build_datasets(config.data)
    run = new_training_run(build_model(config, bundle.train.n_features), config, torch.device("cpu"), 3)
    initial = _parameters(run.model)
    after_batches: list[dict[str, torch.Tensor]] = []
    if monkeypatch is not None:
        real_step = epoch_module.deep_supervision_step

        def recording_step(model, *args, **kwargs):
            metrics = real_step(model, *args, **kwargs)
            after_batches.append(_parameters(model))
            return metrics

        monkeypatch.setattr(epoch_module, "deep_supervision_step", recording_step)
    train_epoch(run, InMemoryData(bundle, Collective(), config), config, Collective())
    return run, bundle, initial, after_batches


def test_the_average_is_the_hand_computed_ema_of_the_weights_after_each_batch(
    ema_config: PlatformConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _, initial, after_batches = _trained_run(ema_config, monkeypatch)
    assert len(after_batches) == 3

    expected = dict(initial)  # the average starts at the initial weights
    for weights in after_batches:
        expected = {name: DECAY * expected[name] + (1 - DECAY) * weights[name] for name in expected}

    averaged = _parameters(run.ema.model)
    assert averaged.keys() == expected.keys()
    for name, value in averaged.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # Where training moved a weight, the average lags behind it.
    final = after_batches[-1]
    moved = [name for name in final if not torch.equal(final[name], initial[name])]
    assert moved and all(not torch.equal(averaged[name], final[name]) for name in moved)
    # The buffers (z_H_init, z_L_init) are the model's, unaveraged.
    for name, buffer in run.hrm.named_buffers():
        assert torch.equal(dict(run.ema.model.named_buffers())[name], buffer), name


def test_a_resumed_run_ends_with_the_same_weights_and_average_bit_for_bit(
    short_config: PlatformConfig, tmp_path: Path  # noqa: F811 (the fixture imported above)
) -> None:
    short_config.train.ema_decay = 0.9
    train_local(short_config, tmp_path)
    uninterrupted = load_checkpoint(tmp_path / "epoch_0003")
    uninterrupted_history = _history(tmp_path / "epoch_0003")
    shutil.rmtree(tmp_path / "epoch_0003")  # as if the process died during epoch 3

    train_local(short_config, tmp_path)

    resumed = load_checkpoint(tmp_path / "epoch_0003")
    assert [entry["resumed_after_epoch"] for entry in _history(tmp_path / "epoch_0003")] == [0, 0, 2]
    for name, tensor in uninterrupted.model_state.items():
        assert torch.equal(resumed.model_state[name], tensor), name
    assert resumed.ema_state is not None and resumed.ema_state.keys() == uninterrupted.ema_state.keys()
    for name, tensor in uninterrupted.ema_state.items():
        assert torch.equal(resumed.ema_state[name], tensor), name
    assert not all(torch.equal(resumed.ema_state[name], tensor) for name, tensor in resumed.model_state.items())
    last = _history(tmp_path / "epoch_0003")[2]
    assert last["ema_fingerprints"] == uninterrupted_history[2]["ema_fingerprints"]
    assert last["ema_fingerprints"] != last["param_fingerprints"]


def _hrm_state(config: PlatformConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return HRM(config.model, n_features=len(FEATURE_NAMES), window=WINDOW).state_dict()


def _save(directory: Path, config: PlatformConfig, ema_state: dict[str, torch.Tensor] | None) -> Path:
    return save_checkpoint(directory, model_state=_hrm_state(config, seed=0), config=config,
                           feature_spec=_feature_spec(WINDOW), epoch=1, metrics={}, ema_state=ema_state)


def test_a_checkpoint_with_an_average_serves_the_average_and_says_so(
    smoke_config: PlatformConfig, tmp_path: Path
) -> None:
    ema_state = _hrm_state(smoke_config, seed=1)
    checkpoint = _save(tmp_path / "ckpt", smoke_config, ema_state)

    manifest = load_manifest(checkpoint)
    assert manifest["inference_weights"] == EMA_FILE
    assert set(manifest["files"]) == {MODEL_FILE, EMA_FILE}
    assert manifest["model_version"] == manifest["files"][EMA_FILE][:12]  # the version of what is served
    model, loaded = load_model(checkpoint)
    served = model.state_dict()
    assert all(torch.equal(served[name], tensor) for name, tensor in ema_state.items())
    assert not all(torch.equal(served[name], tensor) for name, tensor in loaded.model_state.items())


def test_a_checkpoint_without_an_average_loads_as_before(smoke_config: PlatformConfig, tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt", smoke_config, ema_state=None)
    manifest = load_manifest(checkpoint)
    assert manifest["inference_weights"] == MODEL_FILE and EMA_FILE not in manifest["files"]
    assert manifest["model_version"] == manifest["files"][MODEL_FILE][:12]

    # A checkpoint written before the key existed reads the same.
    del manifest["inference_weights"]
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))
    model, loaded = load_model(checkpoint)
    assert loaded.ema_state is None
    served = model.state_dict()
    assert all(torch.equal(served[name], tensor) for name, tensor in _hrm_state(smoke_config, seed=0).items())


def test_validation_runs_the_average(ema_config: PlatformConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    run, bundle, _, _ = _trained_run(ema_config)
    predicted_with = []
    real_predict = validation_module.predict

    def spying_predict(model, *args, **kwargs):
        predicted_with.append(model)
        return real_predict(model, *args, **kwargs)

    monkeypatch.setattr(validation_module, "predict", spying_predict)
    with_average = validate(run, InMemoryData(bundle, Collective(), ema_config), ema_config, Collective())
    assert predicted_with and all(model is run.ema.model for model in predicted_with)
    assert run.hrm.training and not run.ema.model.training  # each left in its own mode

    # The same numbers as a plain run holding the averaged weights; other numbers than the raw weights'.
    ema_config.train.ema_decay = None
    plain = new_training_run(build_model(ema_config, bundle.train.n_features), ema_config, torch.device("cpu"), 3)
    monkeypatch.setattr(validation_module, "predict", real_predict)
    plain.hrm.load_state_dict(run.ema.state_dict())
    assert validate(plain, InMemoryData(bundle, Collective(), ema_config), ema_config, Collective()) == with_average
    plain.hrm.load_state_dict(run.hrm.state_dict())
    assert (
        validate(plain, InMemoryData(bundle, Collective(), ema_config), ema_config, Collective())["val_loss"]
        != with_average["val_loss"]
    )
