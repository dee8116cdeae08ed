"""House rules on imports, checked in fresh interpreters: server code never imports the lab stand-ins for
outside parties (labdcc: area DNOs, DCC, ACB; simulator: meters) nor the bench client; the domain and the
pure codecs (gbcs, duis) import no grpc, no pkcs11, no database binding and no metrics library."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing every module of `modules`' packages; vdno's own
    packages by their name under vdno (`vdno.server` -> "server")."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"for root in {modules!r}:\n"
        "    package = importlib.import_module(root)\n"
        "    for info in pkgutil.walk_packages(getattr(package, '__path__', []), root + '.'):\n"
        "        if '.migrations' not in info.name:\n"
        "            importlib.import_module(info.name)\n"
        "names = [m.split('.') for m in sys.modules]\n"
        "print(' '.join(sorted({n[1] if n[0] == 'vdno' and len(n) > 1 else n[0] for n in names})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_server_imports_no_lab_stand_in_and_no_bench_client() -> None:
    loaded = imported_after(["vdno.server"])
    assert "server" in loaded and "duis" in loaded  # the walk reached the hand-in code
    assert not loaded & {"labdcc", "simulator", "client", "admin", "scripts"}


@pytest.mark.parametrize("package", ["vdno.server.domain", "vdno.gbcs", "vdno.duis"])
def test_domain_and_codecs_import_no_grpc_pkcs11_database_or_metrics(package: str) -> None:
    loaded = imported_after([package])
    assert not loaded & {"grpc", "pkcs11", "sqlalchemy", "psycopg", "alembic", "prometheus_client"}, package
