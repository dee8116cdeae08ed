from __future__ import annotations

import pytest
from bench_testlib import LabWorld, make_world


@pytest.fixture(scope="session")
def world() -> LabWorld:
    return make_world()
