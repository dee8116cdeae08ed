from __future__ import annotations

from pathlib import Path

import pytest
from gbcs_testlib import Vector, load_vectors


@pytest.fixture(scope="session")
def vectors(vectors_dir: Path) -> list[Vector]:
    found = load_vectors(vectors_dir)
    assert len(found) == 40
    return found


@pytest.fixture(scope="session")
def keystore(vectors_dir: Path) -> Path:
    return vectors_dir / "keystore"


@pytest.fixture(scope="session")
def keystore_after(vectors_dir: Path) -> Path:
    return vectors_dir / "keystore-after-replacement"
