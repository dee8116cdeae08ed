"""Shared fixtures. Parts that a laptop may lack (SoftHSM, PostgreSQL, the shared vectors) skip loudly
off CI and fail when CI=true."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
from rtds_vectors import vectors_path

ROOT = Path(__file__).resolve().parent.parent


def require_part(what: str, available: bool, how: str) -> None:
    """Fail in CI, skip loudly elsewhere, when a real part the test needs is missing."""
    if available:
        return
    message = f"{what} is not available: {how}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    warnings.warn(f"SKIPPING: {message}", stacklevel=2)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    path = vectors_path()
    require_part("the RTDS vectors", (path / "INDEX.md").is_file(), f"expected at {path}")
    return path


@pytest.fixture(scope="session")
def softhsm_module() -> Path:
    """Path of libsofthsm2.so, found the way the server finds it; tokens are made per test."""
    from vdno.server.domain.errors import HsmUnavailable
    from vdno.server.hsm.softhsm import find_softhsm_module

    try:
        found: Path | None = find_softhsm_module()
    except HsmUnavailable as exc:
        found, why = None, str(exc)
    else:
        why = "softhsm2-util is missing: install the Debian package softhsm2 (make setup does)"
    require_part("SoftHSM", found is not None and shutil.which("softhsm2-util") is not None, why)
    assert found is not None
    return found


def _postgres_reachable(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """psycopg URL of the machine's PostgreSQL (database `test`, trust auth)."""
    url = os.environ.get("VDNO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    require_part("PostgreSQL", _postgres_reachable(url), f"cannot connect to {url}")
    return url


@pytest.fixture(scope="session")
def forge_world():  # type: ignore[no-untyped-def]
    """The lab world of forge_testlib (real keys; certificates valid from a day ago), one per session."""
    from forge_testlib import make_forge_world

    return make_forge_world()


@pytest.fixture(scope="session")
def postgres_backup_tools() -> tuple[str, str]:
    """Paths of pg_dump and pg_restore, to back up and restore the machine's PostgreSQL."""
    dump, restore = shutil.which("pg_dump"), shutil.which("pg_restore")
    how = "install the Debian package postgresql-client"
    require_part("pg_dump and pg_restore", bool(dump and restore), how)
    assert dump is not None and restore is not None
    return dump, restore
