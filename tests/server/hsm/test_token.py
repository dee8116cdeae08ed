"""server/hsm/token.py: the module gate, reinitialisation, and finding a token by label, on SoftHSM."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pkcs11
import pytest
from hsm_testlib import LoginCounter
from structlog.testing import capture_logs

from vdno.server.domain.errors import HsmUnavailable
from vdno.server.hsm import _cki
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken, ensure_softhsm_token
from vdno.server.hsm.token import ModuleGate, module_gate, reinitialise

SO_PIN = "so-pin-0815"  # conftest.SO_PIN


def test_token_work_and_reinitialisation_wait_for_each_other() -> None:
    gate = ModuleGate()
    order: list[str] = []

    def token_work() -> None:
        with gate.shared():
            order.append("shared")

    with gate.exclusive():
        worker = threading.Thread(target=token_work)
        worker.start()
        worker.join(0.2)
        assert worker.is_alive()  # held at the gate
        order.append("exclusive ends")
    worker.join(5)
    assert order == ["exclusive ends", "shared"]
    order.clear()

    def reinitialising() -> None:
        with gate.exclusive():
            order.append("exclusive")

    with gate.shared():
        worker = threading.Thread(target=reinitialising)
        worker.start()
        worker.join(0.2)
        assert worker.is_alive()  # waits for the token work to leave
        order.append("shared ends")
    worker.join(5)
    assert order == ["shared ends", "exclusive"]
    # C_Finalize from a thread that is itself inside the library would wait for itself: refused.
    with gate.shared(), pytest.raises(RuntimeError, match="inside shared"), gate.exclusive():
        pass  # pragma: no cover - refused before
    with gate.exclusive():  # and the gate is free again
        pass


def test_a_reinitialisation_already_done_is_not_done_again(
    hsm_token: SoftHsmToken, user_pin: str, count_logins: LoginCounter
) -> None:
    path = str(hsm_token.module_path)
    seen = reinitialise(path)
    current = reinitialise(path, seen)  # nobody reinitialised since `seen`: done now
    assert current == seen + 1 == module_gate(path).generation
    with Pkcs11Signer(path, hsm_token.label, user_pin) as signer:
        signer.check()  # a session opened after the reinitialisation
        # A caller that saw an older generation: the module is already fresh, nothing is done.
        assert reinitialise(path, seen) == current == module_gate(path).generation
        with capture_logs() as logs:
            signer.check()  # its session lives on
    assert [e for e in logs if e["event"] == "hsm.unavailable"] == []
    assert count_logins.calls == 1


def test_two_tokens_with_one_label_are_refused(
    hsm_token: SoftHsmToken, softhsm_state_dir: Path, user_pin: str
) -> None:
    lib = pkcs11.lib(str(hsm_token.module_path))
    free = next(
        slot
        for slot in lib.get_slots(token_present=True)
        if not slot.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
    )
    _cki.init_token(str(hsm_token.module_path), free.slot_id, hsm_token.label, SO_PIN)
    with pytest.raises(HsmUnavailable, match=f"more than one SoftHSM token is labelled '{hsm_token.label}'"):
        ensure_softhsm_token(
            softhsm_state_dir, hsm_token.label, user_pin, SO_PIN, module_path=hsm_token.module_path
        )
    with (
        Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin) as signer,
        pytest.raises(HsmUnavailable, match=f"more than one PKCS#11 token is labelled '{hsm_token.label}'"),
    ):
        signer.check()


_CHILD_LOADS_BY_REINITIALISING = """
import sys
from pathlib import Path
from vdno.server.config import ConfigError
from vdno.server.hsm.softhsm import activate_softhsm_conf
from vdno.server.hsm.token import find_token, reinitialise
module, conf, label, other = sys.argv[1:5]
print("generation", reinitialise(module))  # the module's first load in this process
print("token", find_token(module, label).label)
activate_softhsm_conf(Path(conf), Path(module))  # the configuration it was initialised with: accepted
try:
    activate_softhsm_conf(Path(other), Path(module))
except ConfigError as exc:
    print("refused:", exc)
"""


def test_a_module_first_loaded_by_reinitialising_keeps_its_configuration(
    hsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    other = tmp_path / "softhsm2.conf"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD_LOADS_BY_REINITIALISING,
            str(hsm_token.module_path),
            str(hsm_token.conf_path),
            hsm_token.label,
            str(other),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SOFTHSM2_CONF=str(hsm_token.conf_path)),
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:2] == ["generation 1", f"token {hsm_token.label}"]
    assert lines[2] == (
        f"refused: SoftHSM in this process was initialised with {hsm_token.conf_path}; it reads "
        f"SOFTHSM2_CONF only at C_Initialize, so {other} cannot take effect. Use one state dir per process."
    )
