from __future__ import annotations

from pathlib import Path

import pytest
from rtds_vectors import read_hex
from sim_testlib import NOBYNO, World, make_world


@pytest.fixture(scope="session")
def world() -> World:
    return make_world()


@pytest.fixture(scope="session")
def nobyno_command(vectors_dir: Path) -> bytes:
    return read_hex(vectors_dir / NOBYNO.format("COMMAND"))


@pytest.fixture(scope="session")
def nobyno_precommand(vectors_dir: Path) -> bytes:
    return read_hex(vectors_dir / NOBYNO.format("PRECOMMAND"))


@pytest.fixture(scope="session")
def nobyno_response(vectors_dir: Path) -> bytes:
    return read_hex(vectors_dir / NOBYNO.format("RESPONSE"))
