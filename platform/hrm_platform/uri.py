"""What counts as a URI (s3://, gs://, file://, ...) rather than a local path, for storage and data alike."""

from __future__ import annotations

import re
from pathlib import Path

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    """`scheme://...` given as a string. A Path never is one: Path("s3://b/k") has already become "s3:/b/k"."""
    return isinstance(location, str) and bool(_URI.match(location))
