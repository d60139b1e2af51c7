"""What `hrm` tells a user about itself (issue 20, point 7): its version, every config key with its default
and description, the merged config of a preset + overrides, a suggestion for a misspelt key, a help text and
default for every argument, and `hrm train --data FILE` like `hrm data` and `hrm demo`."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hrm_platform import cli
from hrm_platform.config import PlatformConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "jobs" / "configs" / "smoke.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "hrm"  # installed with the package into the venv


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._build_parser()
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


# ------------------------------------------------------------------------------------------------ --version


def test_version_through_the_installed_console_script() -> None:
    """Before: `hrm --version` exited 2 with "the following arguments are required: command"."""
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.is_file() else [sys.executable, "-m", "hrm_platform.cli"]
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    from importlib.metadata import version

    expected = f"hrm {version('hrm-platform')}" + (f" (git {head})" if head else "")
    assert result.stdout.strip() == expected


def test_version_outside_a_git_checkout_has_no_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import version

    from hrm_platform import checkpoint

    monkeypatch.setattr(checkpoint, "git_revision", lambda: None)
    assert cli.version_text() == f"hrm {version('hrm-platform')}"


# --------------------------------------------------------------------------------------------- hrm config


def test_config_prints_the_merged_preset_and_overrides_as_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `hrm config` was an invalid choice."""
    assert cli.main(["config", "--config", str(SMOKE), "train.epochs=3", "model.d_model=32"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["model"]["d_model"] == 32
    expected = load_config(SMOKE, ["train.epochs=3", "model.d_model=32"])
    assert PlatformConfig.model_validate(printed) == expected  # the YAML is a preset that loads back identically


def test_config_keys_lists_every_key_with_default_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^  ([a-z_]+\.[a-z0-9_]+) ", out, flags=re.MULTILINE)
    every_key = [f"{section}.{key}" for section, field in PlatformConfig.model_fields.items()
                 for key in field.annotation.model_fields]
    assert listed == every_key
    assert re.search(r"^  data\.window +64 +bars per model input window$", out, flags=re.MULTILINE)
    assert re.search(r"^  serve\.cuda_graph_buckets +\[1, 8, 32, 128, 512\] +batch sizes", out, flags=re.MULTILINE)
    assert re.search(r"^  data\.path +null +when source=.file.: an OHLCV CSV or Parquet file", out, flags=re.MULTILINE)
    assert "\ntrain: Optimisation, Ray Train scaling and checkpointing.\n" in out


def test_config_keys_marks_what_the_preset_and_overrides_change(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--keys", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  train\.epochs +6 +\[here: 3\]$", out, flags=re.MULTILINE)
    assert out.count("[here:") == 1


def test_config_refuses_a_bad_override_like_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "train.epochs=0"]) == 2
    assert "hrm config: invalid configuration (defaults):\n  train.epochs=0:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ did you mean


def test_misspelt_key_suggests_the_real_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `train.epoch: unknown key (value 3)` and nothing more."""
    assert cli.main(["train", "train.epoch=3"]) == 2
    assert "train.epoch: unknown key (value 3); did you mean train.epochs?" in capsys.readouterr().err


def test_misspelt_section_suggests_the_real_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "trian.epochs=3"]) == 2
    assert "did you mean train?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- help texts


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_argument_of_every_subcommand_has_help(command: str) -> None:
    """Before: --checkpoint, --out, --url, --bars, --position and --max-segments had none."""
    parser = _subcommands()[command]
    missing = [action.dest for action in parser._actions if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("predict", ["(default: http://127.0.0.1:8000)", "(default: 0.0)", "(default: HRM_API_TOKEN)"]),
        ("evaluate", ["(default: artifacts/eval)"]),
        ("demo", ["(default: artifacts/demo)", "(default: jobs/configs/demo.yaml)"]),
    ],
)
def test_help_shows_the_defaults(command: str, shown: list[str]) -> None:
    text = " ".join(_subcommands()[command].format_help().split())  # undo argparse's line wrapping
    for default in shown:
        assert default in text
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text


# ------------------------------------------------------------------------------------- hrm train --data


def test_train_accepts_data_file_like_data_and_demo(tmp_path: Path) -> None:
    """Before: `hrm train --data FILE` exited 2 with "unrecognized arguments: --data"."""
    bars = tmp_path / "bars.csv"
    for command in ("train", "data", "demo"):
        args = cli._build_parser().parse_args([command, "--data", str(bars), "data.window=32"])
        data = cli._config(args).data
        assert (data.source, data.path, data.window) == ("file", str(bars), 32)
