"""House rules: the bench client never imports server code (nor the HSM binding only the server needs), nor
the lab stand-ins for outside parties (the simulated meters, the lab DCC and PKI)."""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_neither_server_nor_pkcs11_nor_a_lab_stand_in() -> None:
    code = (
        "import importlib, pkgutil, sys, vdno.client as client\n"
        "names = [m.name for m in pkgutil.iter_modules(client.__path__, 'vdno.client.')]\n"
        "assert len(names) >= 9, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "bad = [m for m in sys.modules\n"
        "       if m.split('.')[0] in ('server', 'pkcs11')\n"
        "       or m.startswith(('vdno.server', 'vdno.simulator', 'vdno.labdcc', 'vdno.labpki'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
