"""Finding and reading the shared RTDS vector files (hex text, as DCC publishes them)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the vectors may be: $VDNO_VECTORS; `shared/` beside the checkout (the workspace layout); the
# workspace's own `shared/` on this project's machines (for a checkout cloned anywhere else, e.g. by CI).
_CANDIDATES = (ROOT.parent / "shared" / "gbcs" / "vectors", Path("/work/shared/gbcs/vectors"))


def vectors_path() -> Path:
    """The RTDS vector folder (it holds INDEX.md); the first candidate when none is present."""
    override = os.environ.get("VDNO_VECTORS")
    if override:
        return Path(override)
    return next((p for p in _CANDIDATES if (p / "INDEX.md").is_file()), _CANDIDATES[0])


def read_hex(path: Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))
