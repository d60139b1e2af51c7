"""The README's examples hold: every `hrm` command parses with the real CLI, quick ones run, paths exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hrm_platform.cli import _build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text()
# Paths of the repository the README names in backticks or commands (a folder, then more, then a file).
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:platform|jobs|benchmarks|deployments|tests)/[\w./-]+\.(?:py|yaml|sh))")
# Modules of the package the README names by their path inside it, e.g. `data/frequency.py`.
PACKAGE_PATH = re.compile(r"`((?:data|model|training|serving|evaluation|baselines)/\w+\.py)")
QUICK = ("hrm data", "hrm data --config jobs/configs/smoke.yaml")  # run for real: seconds, no Ray


def bash_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].split(" # ")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def hrm_commands() -> list[list[str]]:
    """The argv of every `hrm ...` example (after env assignments such as HRM_API_TOKEN=x); not `$(hrm ...)`."""
    found = []
    for command in bash_commands():
        words = shlex.split(command)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words and words[0] == "hrm":
            found.append(words[1:])
    return found


def test_the_readme_has_hrm_examples_for_every_command() -> None:
    named = {argv[0] for argv in hrm_commands() if argv}
    assert {"data", "train", "evaluate", "export", "serve", "predict"} <= named


@pytest.mark.parametrize("argv", hrm_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_hrm_example_parses(argv: list[str]) -> None:
    """Subcommands, flags and their values exactly as the CLI defines them (nothing runs)."""
    _build_parser().parse_args(argv)


@pytest.mark.parametrize("command", QUICK)
def test_quick_examples_run(command: str, capsys) -> None:
    assert command in bash_commands()
    assert main(shlex.split(command)[1:]) == 0
    assert "bar frequency" in capsys.readouterr().out


def test_every_repository_path_the_readme_names_exists() -> None:
    paths = sorted(set(REPO_PATH.findall(README)))
    package_files = sorted(set(PACKAGE_PATH.findall(README)))
    assert len(paths) > 10 and len(package_files) > 20
    missing = [path for path in paths if not (REPO_ROOT / path).exists()]
    missing += [path for path in package_files if not (REPO_ROOT / "platform/hrm_platform" / path).exists()]
    assert not missing, f"README names files that do not exist: {missing}"


def test_every_benchmark_module_the_readme_names_exists() -> None:
    section = README[README.index("## Benchmarks"):]
    section = section[: section.index("\n## ", 1)]
    named = set(re.findall(r"python -m benchmarks\.(\w+)", README)) | set(re.findall(r"^\| `(\w+)`", section, re.M))
    benchmarks = {path.stem for path in (REPO_ROOT / "benchmarks").glob("*.py")}
    assert len(named) >= 6 and named <= benchmarks, named - benchmarks
