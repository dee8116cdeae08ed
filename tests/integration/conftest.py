"""Fixtures of the integration tests. A deployment (state folder, SoftHSM token, database, running server)
takes a couple of seconds, so each test module shares one. Modules that override `backend` with
params=["sqlite", "postgres"] run against both databases."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema
from integration_testlib import Deployment, deploy, postgres_schema

# duis_testlib (DUIS schema location and validation) is shared with tests/duis.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "duis"))

from duis_testlib import require_duis_schema


@pytest.fixture(scope="session")
def duis_schema() -> xmlschema.XMLSchema:
    return require_duis_schema()


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def deployment(
    request: pytest.FixtureRequest,
    backend: str,
    softhsm_module: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    with contextlib.ExitStack() as stack:
        url = None
        if backend == "postgres":
            url = stack.enter_context(postgres_schema(request.getfixturevalue("postgres_url")))
        state = tmp_path_factory.mktemp(f"state-{backend}")
        deployed = deploy(state, backend, url, prepare=getattr(request.module, "prepare_database", None))
        stack.callback(deployed.server.stop)
        yield deployed
