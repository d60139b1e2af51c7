"""The checkpoint directory round-trips exactly and refuses anything tampered with, naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hrm_platform.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    TRAINING_STATE_FILE,
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_manifest,
    save_checkpoint,
)
from hrm_platform.config import PlatformConfig
from hrm_platform.data.features import FEATURE_NAMES, LOOKBACK, FeatureSpec, FeatureStats


def _feature_spec(window: int = 8) -> FeatureSpec:
    n_features = len(FEATURE_NAMES)
    stats = FeatureStats(mean=np.arange(n_features, dtype=np.float64), std=np.full(n_features, 2.0))
    return FeatureSpec(names=FEATURE_NAMES, lookback=LOOKBACK, window=window, stats=stats)


def _model_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"encoder.weight": torch.randn(4, 3, generator=generator), "head.bias": torch.randn(3, generator=generator)}


def _training_state() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "step": 42,
        "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
    }


def _save(directory: Path, **overrides) -> Path:
    arguments = dict(
        model_state=_model_state(),
        config=PlatformConfig(),
        feature_spec=_feature_spec(),
        epoch=3,
        metrics={"val_accuracy": 0.61, "train_loss": 0.9, "not_measured": float("nan")},
        training_state=_training_state(),
        history=[{"epoch": 1, "train_loss": 1.1}, {"epoch": 2, "train_loss": 1.0}],
    )
    arguments.update(overrides)
    return save_checkpoint(directory, **arguments)


def _rewrite_manifest(checkpoint: Path, edit) -> None:
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    edit(manifest)
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_round_trip_restores_weights_state_and_manifest(tmp_path: Path) -> None:
    config = PlatformConfig()
    config.train.epochs = 9
    training_state = _training_state()
    checkpoint = _save(tmp_path / "ckpt", config=config, training_state=training_state)

    loaded = load_checkpoint(checkpoint, with_training_state=True)

    for name, tensor in _model_state().items():
        assert torch.equal(loaded.model_state[name], tensor)
    assert loaded.config == config and loaded.config.train.epochs == 9
    assert loaded.feature_spec.names == FEATURE_NAMES and loaded.feature_spec.lookback == LOOKBACK
    np.testing.assert_array_equal(loaded.feature_spec.stats.mean, np.arange(len(FEATURE_NAMES)))
    np.testing.assert_array_equal(loaded.feature_spec.stats.std, np.full(len(FEATURE_NAMES), 2.0))
    assert loaded.training_state["epoch"] == 3 and loaded.training_state["step"] == 42
    assert torch.equal(loaded.training_state["rng"]["torch"], training_state["rng"]["torch"])
    assert loaded.training_state["rng"]["python"] == (3, (1, 2, 3), None)
    expected_exp_avg = training_state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(loaded.training_state["optimizer"]["state"][0]["exp_avg"], expected_exp_avg)

    manifest = loaded.manifest
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["files"][MODEL_FILE] == file_sha256(checkpoint / MODEL_FILE)
    assert manifest["files"][TRAINING_STATE_FILE] == file_sha256(checkpoint / TRAINING_STATE_FILE)
    assert loaded.model_version == manifest["files"][MODEL_FILE][:12]
    assert (manifest["n_features"], manifest["window"], manifest["epoch"]) == (len(FEATURE_NAMES), 8, 3)
    assert manifest["metrics"]["latest"] == {"val_accuracy": 0.61, "train_loss": 0.9, "not_measured": None}
    assert [entry["epoch"] for entry in manifest["metrics"]["history"]] == [1, 2]
    assert manifest["git_revision"] is None or len(manifest["git_revision"]) == 40


def test_same_weights_give_the_same_model_version(tmp_path: Path) -> None:
    first = load_manifest(_save(tmp_path / "a"))
    second = load_manifest(_save(tmp_path / "b", epoch=4))
    changed = load_manifest(_save(tmp_path / "c", model_state={"w": torch.zeros(2)}))
    assert first["model_version"] == second["model_version"] != changed["model_version"]


def test_saving_over_an_existing_checkpoint_replaces_it_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    _save(target, epoch=1)
    _save(target, epoch=2, training_state=None)

    assert load_manifest(target)["epoch"] == 2
    assert not (target / TRAINING_STATE_FILE).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]


def test_a_failed_write_leaves_no_partial_directory(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        _save(tmp_path / "ckpt", metrics={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_without_training_state_the_checkpoint_loads_but_cannot_resume(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt", training_state=None)
    assert load_checkpoint(checkpoint).training_state is None
    with pytest.raises(CheckpointError, match=f"has no {TRAINING_STATE_FILE}"):
        load_checkpoint(checkpoint, with_training_state=True)


def test_tampered_weights_are_refused_naming_the_file(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    state = torch.load(checkpoint / MODEL_FILE, weights_only=True)
    state["head.bias"] += 1.0  # a plausible, loadable, but different model
    torch.save(state, checkpoint / MODEL_FILE)

    with pytest.raises(CheckpointError, match=rf"{MODEL_FILE} failed its integrity check"):
        load_checkpoint(checkpoint)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    payload = (checkpoint / TRAINING_STATE_FILE).read_bytes()
    (checkpoint / TRAINING_STATE_FILE).write_bytes(payload[: len(payload) // 2])

    with pytest.raises(CheckpointError, match=rf"{TRAINING_STATE_FILE} failed its integrity check.*truncated"):
        load_manifest(checkpoint)


def test_manifest_hash_mismatch_is_refused(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    _rewrite_manifest(checkpoint, lambda manifest: manifest["files"].update({MODEL_FILE: "0" * 64}))

    with pytest.raises(CheckpointError, match=rf"{MODEL_FILE} failed its integrity check.*manifest says 000000000000"):
        load_checkpoint(checkpoint)


def test_listed_file_that_is_missing_is_refused(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    (checkpoint / TRAINING_STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"{TRAINING_STATE_FILE} is listed in {MANIFEST_FILE} but missing"):
        load_manifest(checkpoint)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    _rewrite_manifest(checkpoint, lambda manifest: manifest.update(format_version=FORMAT_VERSION + 1))

    with pytest.raises(CheckpointError, match=rf"format_version {FORMAT_VERSION + 1}; this build reads"):
        load_manifest(checkpoint)


def test_missing_or_broken_manifest_is_refused(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    (checkpoint / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{MANIFEST_FILE} is not valid JSON"):
        load_manifest(checkpoint)
    (checkpoint / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{MANIFEST_FILE} is missing"):
        load_manifest(checkpoint)


class _Payload:
    """Unpickling this runs code: exactly what weights_only=True must refuse."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_pickled_objects_are_refused_even_with_a_matching_hash(tmp_path: Path, capsys) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    torch.save({"weight": torch.ones(1), "extra": _Payload()}, checkpoint / MODEL_FILE)
    new_hash = file_sha256(checkpoint / MODEL_FILE)
    _rewrite_manifest(
        checkpoint, lambda manifest: (manifest["files"].update({MODEL_FILE: new_hash}),
                                      manifest.update(model_version=new_hash[:12]))
    )

    with pytest.raises(CheckpointError, match=rf"{MODEL_FILE} cannot be loaded as plain tensors \(weights_only=True\)"):
        load_checkpoint(checkpoint)
    assert "unpickled arbitrary code" not in capsys.readouterr().out


def test_model_version_must_match_the_weights(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    _rewrite_manifest(checkpoint, lambda manifest: manifest.update(model_version="abcdefabcdef"))
    with pytest.raises(CheckpointError, match="model_version 'abcdefabcdef' does not match"):
        load_manifest(checkpoint)


def test_manifest_is_strict_json(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path / "ckpt")
    text = (checkpoint / MANIFEST_FILE).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"manifest contains {name}"))


def test_load_model_rebuilds_the_same_hrm_in_eval_mode(tmp_path: Path) -> None:
    from hrm_platform.checkpoint import load_model
    from hrm_platform.model.hrm import HRM

    config = PlatformConfig()
    config.model.d_model, config.model.n_heads = 16, 2
    torch.manual_seed(0)
    model = HRM(config.model, n_features=len(FEATURE_NAMES), window=8)
    checkpoint = _save(tmp_path / "ckpt", model_state=model.state_dict(), config=config)

    loaded_model, loaded = load_model(checkpoint)

    assert not loaded_model.training and loaded.epoch == 3
    windows = torch.randn(2, 8, len(FEATURE_NAMES))
    carry = model.initial_carry(2)
    model.eval()
    with torch.no_grad():
        _, expected = model(carry, windows)
        _, actual = loaded_model(carry, windows)
    assert torch.equal(expected.action_logits, actual.action_logits)


def test_weights_that_do_not_fit_the_described_model_are_refused(tmp_path: Path) -> None:
    from hrm_platform.checkpoint import load_model

    checkpoint = _save(tmp_path / "ckpt", model_state={"not_a_layer.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=f"{MODEL_FILE} does not fit the model its manifest describes"):
        load_model(checkpoint)
