"""`vdno-server` with every C_Login counted: one line per call is appended to the file named by
VDNO_TEST_LOGIN_LOG before the real C_Login runs (server.hsm._cki.login wrapped, the token untouched).
Used by the integration tests as ServerProcess(launcher=...); the wrapping happens at import, so spawned
worker processes (which import this file again) count too."""

from __future__ import annotations

import os
import sys

from vdno.server.hsm import _cki
from vdno.server.main import app

_real_login = _cki.login


def _counted_login(path: str, session_handle: int, pin: str) -> None:
    with open(os.environ["VDNO_TEST_LOGIN_LOG"], "a") as log:
        log.write(f"C_Login pid {os.getpid()}\n")
    _real_login(path, session_handle, pin)


_cki.login = _counted_login

if __name__ == "__main__":
    sys.exit(app())
