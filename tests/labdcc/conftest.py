from __future__ import annotations

import sys
from pathlib import Path

import pytest
import xmlschema

# duis_testlib (schema location, loading and validation) is shared with tests/duis.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "duis"))

from duis_testlib import require_duis_schema


@pytest.fixture(scope="session")
def duis_schema() -> xmlschema.XMLSchema:
    return require_duis_schema()
