"""PNG checks shared by the plot and evaluation tests: a real image of a sensible size."""

from __future__ import annotations

import struct
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_dimensions(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def assert_sensible_png(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    assert path.is_file()
    width, height = png_dimensions(path)
    assert path.stat().st_size > 5_000, f"{path.name}: {path.stat().st_size} bytes is too small to hold a plot"
    assert width >= min_width and height >= min_height, f"{path.name}: {width}x{height}"
