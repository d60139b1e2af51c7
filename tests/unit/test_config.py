"""Every error message of config.py names the key and the value; overrides and YAML loading behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrm_platform.config import ConfigError, PlatformConfig, load_config, validate_config


def _error(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


def test_defaults_load_without_a_file() -> None:
    config = load_config()
    assert config.data.window == 64 and config.data.horizon == 8
    assert config.data.embargo_bars == 64 + 8  # None means window + horizon


def test_overrides_are_parsed_as_yaml_values() -> None:
    config = load_config(None, ["train.epochs=3", "train.lr=3e-4", "train.use_gpu=true", "data.embargo=0"])
    assert config.train.epochs == 3
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.use_gpu is True
    assert config.data.embargo_bars == 0


def test_override_applies_on_top_of_yaml(tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text("train:\n  epochs: 5\n  batch_size: 32\n")
    config = load_config(preset, ["train.epochs=2"])
    assert (config.train.epochs, config.train.batch_size) == (2, 32)


def test_unknown_key_names_key_and_value() -> None:
    message = _error(["data.windw=32"])
    assert "data.windw" in message and "unknown key" in message and "32" in message


def test_unknown_section_names_key() -> None:
    message = _error(["trainer.epochs=3"])
    assert "trainer" in message and "unknown key" in message


def test_bad_value_names_key_and_value() -> None:
    message = _error(["train.epochs=0"])
    assert "train.epochs=0" in message and "greater than or equal to 1" in message


def test_bad_type_names_key_and_value() -> None:
    message = _error(["model.d_model=wide"])
    assert "model.d_model='wide'" in message


def test_bad_literal_names_key_and_value() -> None:
    message = _error(["train.precision=fp8"])
    assert "train.precision='fp8'" in message


@pytest.mark.parametrize("override", ["train.epochs", "=3", " =3"])
def test_override_without_key_or_equals_sign_is_rejected(override: str) -> None:
    message = _error([override])
    assert repr(override) in message and "section.key=value" in message


def test_override_into_a_value_is_rejected() -> None:
    message = _error(["train.epochs=3", "train.epochs.max=4"])
    assert "'train.epochs.max=4'" in message and "'epochs' is a value, not a section" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.source=file"], "data.path is required when data.source='file'"),
        (["data.val_fraction=0.4", "data.test_fraction=0.4"], "data.val_fraction + data.test_fraction = 0.8"),
        (["model.d_model=100", "model.n_heads=3"], "model.d_model=100 must be divisible by model.n_heads=3"),
        (["model.d_model=12", "model.n_heads=4"], "model.d_model / model.n_heads = 3 must be even"),
        (
            ["model.share_parameters=true", "model.h_layers=2", "model.l_layers=3"],
            "model.share_parameters needs model.h_layers == model.l_layers (got 2, 3)",
        ),
        (["train.precision=fp16"], "train.precision='fp16' needs train.use_gpu=true"),
        (["train.compile_mode=reduce-overhead"], "train.compile_mode='reduce-overhead' needs train.compile=true"),
        (["serve.cuda_graph_buckets=[8, 1]"], "serve.cuda_graph_buckets=[8, 1] must be distinct batch sizes"),
        (["serve.min_replicas=3", "serve.max_replicas=2"], "serve.min_replicas=3 exceeds serve.max_replicas=2"),
    ],
)
def test_cross_field_checks_name_keys_and_values(overrides: list[str], expected: str) -> None:
    message = _error(overrides)
    assert expected in message


def test_several_errors_are_all_reported() -> None:
    message = _error(["train.epochs=0", "serve.port=70000"])
    assert "train.epochs=0" in message and "serve.port=70000" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    assert f"config file not found: {missing}" in _error([], missing)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    preset = tmp_path / "list.yaml"
    preset.write_text("- train\n- data\n")
    message = _error([], preset)
    assert str(preset) in message and "top level must be a mapping" in message and "list" in message


def test_invalid_yaml_is_rejected(tmp_path: Path) -> None:
    preset = tmp_path / "broken.yaml"
    preset.write_text("train: {epochs: 3\n")
    message = _error([], preset)
    assert str(preset) in message and "not valid YAML" in message


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    preset = tmp_path / "empty.yaml"
    preset.write_text("")
    assert load_config(preset) == PlatformConfig()


def test_error_message_names_the_source(tmp_path: Path) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text("data:\n  window: 2\n")
    message = _error([], preset)
    assert str(preset) in message and "data.window=2" in message


def test_plain_dict_round_trip_for_ray_workers() -> None:
    config = load_config(None, ["data.source=file", "data.path=bars.csv", "train.epochs=2"])
    assert validate_config(config.model_dump()) == config
    with pytest.raises(ConfigError, match="model.n_heads=0"):
        validate_config({"model": {"n_heads": 0}}, source="worker")


def test_unknown_key_suggests_the_closest_key_of_its_section() -> None:
    """Before: `train.epoch: unknown key (value 3)` with no suggestion."""
    assert "train.epoch: unknown key (value 3); did you mean train.epochs?" in _error(["train.epoch=3"])
    assert "did you mean data.window?" in _error(["data.windw=32"])


def test_unknown_section_suggests_the_closest_section() -> None:
    assert "trainer: unknown key (value {'epochs': 3}); did you mean train?" in _error(["trainer.epochs=3"])


def test_unknown_key_in_a_preset_gets_the_suggestion_too(tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text("serve:\n  prot: 8001\n")
    assert "serve.prot: unknown key (value 8001); did you mean serve.port?" in _error([], preset)


def test_unknown_key_like_no_real_one_gets_no_suggestion() -> None:
    message = _error(["train.zzzz=1"])
    assert "train.zzzz: unknown key (value 1)" in message and "did you mean" not in message
