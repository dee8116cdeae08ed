"""Reading the shared RTDS vector files (hex text, as DCC publishes them)."""

from __future__ import annotations

from pathlib import Path


def read_hex(path: Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))
