"""The `hrm` parser's shared parts: help that shows defaults, `--version`, and the arguments several
subcommands take (`--config` with key=value overrides, `--data`, `--verbose`). Only argparse and the standard
library at import, so that `hrm --help` stays instant."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

PACKAGE = "hrm-platform"  # the distribution whose version `hrm --version` prints


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: X)` to an argument's help only where there is a default to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: its --help shows every default."""

    def __init__(self, **kwargs) -> None:
        super().__init__(formatter_class=HelpFormatter, **kwargs)


class PrintVersion(argparse.Action):
    """`hrm --version`; the version is looked up only when asked, so `hrm --help` stays instant."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace, values, option_string=None) -> None:
        print(version_text())  # on stdout, as argparse's own version action does
        parser.exit()


def version_text() -> str:
    """`hrm 0.1.0 (git 1a2b3c4)`, without the revision outside a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    from hrm_platform.checkpoint import git_revision

    try:
        package_version = version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        package_version = "unknown"
    revision = git_revision()
    return f"hrm {package_version}" + (f" (git {revision[:7]})" if revision else "")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML preset whose values replace the built-in defaults"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value",
        help="config overrides applied on top of the preset, e.g. train.epochs=3 (`hrm config --keys` lists them)",
    )


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default=None, metavar="FILE",
        help="OHLCV CSV/Parquet file, or a partitioned-Parquet market folder or URI, instead of the synthetic "
        "market (= data.source=file data.path=FILE)",
    )


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose", action="store_true",
        help="also show Ray's own logs (its workers' output and INFO lines); by default only ours and errors",
    )
