from __future__ import annotations

from pathlib import Path

import pytest
import xmlschema
from duis_testlib import make_certificate, require_duis_folder, require_duis_schema


# The shared-part check is duis_testlib.require_part, a copy of tests/conftest.py's: `import conftest` here
# would import this very file (pytest drops the root conftest from sys.modules before loading this one).
@pytest.fixture(scope="session")
def duis_dir() -> Path:
    return require_duis_folder()


@pytest.fixture(scope="session")
def duis_schema() -> xmlschema.XMLSchema:
    return require_duis_schema()


@pytest.fixture(scope="session")
def certificates() -> tuple[bytes, bytes, bytes]:
    """Three distinct DER certificates (DS, KA, path) for codec tests that need no SMKI profile."""
    return make_certificate("ds"), make_certificate("ka"), make_certificate("issuing")
