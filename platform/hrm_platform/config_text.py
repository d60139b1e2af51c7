"""The text forms of a configuration: YAML presets and `key=value` overrides read into a plain dict, a
validation error described a line per key (with the closest real key for a typo), and the table of every key
that `hrm config --keys` prints. Nothing here knows the sections: `config.py` passes its root model in.
"""

from __future__ import annotations

import difflib
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

KEYS_TABLE_WIDTH = 118  # `hrm config --keys` wraps descriptions here


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the value."""


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`train.epochs=3` sets raw['train']['epochs'] = 3; the value is parsed as YAML (numbers, bools, null)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = text


def describe_error(error: ValidationError, source: str, root: type[BaseModel]) -> str:
    """Every problem of `error`, a line each, naming the key and the value (and the closest real key)."""
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {item['input']!r}){_did_you_mean(item['loc'], root)}")
        elif item["type"] == "value_error":
            lines.append(f"  {key or '<section>'}: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}={item['input']!r}: {item['msg']}")
    return "\n".join(lines)


def _did_you_mean(loc: tuple[int | str, ...], root: type[BaseModel]) -> str:
    """`; did you mean train.epochs?` for `train.epoch`: the closest key its section has (or section name)."""
    *section_path, name = (str(part) for part in loc)
    close = difflib.get_close_matches(name, _known_keys(section_path, root), n=1)
    return f"; did you mean {'.'.join([*section_path, close[0]])}?" if close else ""


def _known_keys(section_path: list[str], root: type[BaseModel]) -> list[str]:
    """The keys of the section at `section_path` (the section names for []); [] where there is no section."""
    section = root
    for part in section_path:
        field = section.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        section = annotation
    return list(section.model_fields)


def keys_table(config: BaseModel) -> str:
    """Every setting as `section.key  default  description`, a block per section; where `config` (a preset
    plus overrides) differs from the default, `[here: value]` follows."""
    defaults = type(config)()
    return "\n\n".join(
        _section_keys(name, getattr(defaults, name), getattr(config, name)) for name in type(config).model_fields
    )


def _section_keys(name: str, default: BaseModel, current: BaseModel) -> str:
    defaults, values = default.model_dump(mode="json"), current.model_dump(mode="json")
    shown = {key: _as_override(value) for key, value in defaults.items()}
    key_width = max(len(f"{name}.{key}") for key in shown)
    default_width = min(20, max(len(text) for text in shown.values()))  # a long default pushes only its own line
    lines = [f"{name}: {' '.join((type(default).__doc__ or '').split())}"]
    for key, field in type(default).model_fields.items():
        here = _as_override(values[key])
        note = f"[here: {here}]" if here != shown[key] else ""
        prefix = f"  {f'{name}.{key}':<{key_width}}  {shown[key]:<{default_width}}  "
        text = " ".join(part for part in (field.description, note) if part)
        wrapped = textwrap.wrap(
            text, KEYS_TABLE_WIDTH, initial_indent=prefix, subsequent_indent=" " * len(prefix), break_on_hyphens=False
        )
        lines += wrapped or [prefix.rstrip()]
    return "\n".join(lines)


def _as_override(value: object) -> str:
    """A value as it is written in a `key=value` override (YAML flow style): null, true, [1, 8], 0.001."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("...\n").strip()
