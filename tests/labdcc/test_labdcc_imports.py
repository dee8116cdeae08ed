"""House rules: duis imports no grpc, pkcs11, server or client; labdcc no grpc, pkcs11, server or client."""

from __future__ import annotations

import subprocess
import sys


def test_duis_and_labdcc_import_no_service_code() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "from vdno import duis, labdcc\n"
        "names = [m.name for p in (duis, labdcc)\n"
        "         for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.')]\n"
        "assert len(names) >= 12, names\n"
        "for name in names:\n"
        "    if not name.endswith('__main__'):\n"
        "        importlib.import_module(name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('server', 'client', 'grpc', 'pkcs11')\n"
        "       or m.startswith(('vdno.server', 'vdno.client'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
