from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest

from vdno.server.config import ConfigError
from vdno.server.hsm import _cki, softhsm
from vdno.server.hsm.softhsm import SoftHsmToken, ensure_softhsm_token, find_softhsm_module
from vdno.server.hsm.token import open_token_session

USER_PIN = "user-pin-4711"  # same as conftest.USER_PIN
SO_PIN = "so-pin-0815"


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_bootstrap_is_idempotent(softhsm_state_dir: Path, softhsm_module: Path, token_label: str) -> None:
    first = ensure_softhsm_token(softhsm_state_dir, token_label, USER_PIN, SO_PIN, module_path=softhsm_module)
    assert first.created
    assert first.conf_path == softhsm_state_dir.resolve() / "softhsm2.conf"
    assert first.token_dir == softhsm_state_dir.resolve() / "tokens"
    conf = first.conf_path.read_text()
    assert f"directories.tokendir = {first.token_dir}\n" in conf
    assert "objectstore.backend = file" in conf
    assert "log.level = ERROR" in conf
    assert "/var/lib/softhsm" not in conf
    assert os.environ["SOFTHSM2_CONF"] == str(first.conf_path)
    labels = [t.label for t in pkcs11.lib(str(softhsm_module)).get_tokens()]
    assert labels.count(token_label) == 1

    before = _snapshot(softhsm_state_dir)
    second = ensure_softhsm_token(
        softhsm_state_dir, token_label, USER_PIN, SO_PIN, module_path=softhsm_module
    )
    assert not second.created
    assert second.conf_path == first.conf_path
    assert _snapshot(softhsm_state_dir) == before
    labels = [t.label for t in pkcs11.lib(str(softhsm_module)).get_tokens()]
    assert labels.count(token_label) == 1


def test_bootstrap_never_spawns_a_process(
    softhsm_state_dir: Path, softhsm_module: Path, token_label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PINs cannot leak through argv when no command is run at all."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_softhsm_token must not run a command")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "system", refuse)
    token = ensure_softhsm_token(softhsm_state_dir, token_label, USER_PIN, SO_PIN, module_path=softhsm_module)
    assert token.created


def test_second_state_dir_in_one_process_is_refused(
    softhsm_state_dir: Path, softhsm_module: Path, tmp_path: Path, token_label: str
) -> None:
    ensure_softhsm_token(softhsm_state_dir, token_label, USER_PIN, SO_PIN, module_path=softhsm_module)
    with pytest.raises(ConfigError, match="reads SOFTHSM2_CONF only at C_Initialize"):
        ensure_softhsm_token(tmp_path, "other", USER_PIN, SO_PIN, module_path=softhsm_module)
    # put the process back on the shared state dir
    softhsm.activate_softhsm_conf(softhsm_state_dir / "softhsm2.conf", softhsm_module)


def test_bad_arguments(softhsm_state_dir: Path, softhsm_module: Path) -> None:
    with pytest.raises(ValueError, match="label"):
        ensure_softhsm_token(softhsm_state_dir, "x" * 33, USER_PIN, SO_PIN, module_path=softhsm_module)
    with pytest.raises(ValueError, match="PINs"):
        ensure_softhsm_token(softhsm_state_dir, "short-pin", "123", SO_PIN, module_path=softhsm_module)


def test_find_softhsm_module(softhsm_module: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(softhsm.MODULE_ENV, raising=False)
    assert find_softhsm_module().is_file()
    from vdno.server.domain.errors import HsmUnavailable

    monkeypatch.setenv(softhsm.MODULE_ENV, str(softhsm_module))
    assert find_softhsm_module() == softhsm_module
    monkeypatch.setenv(softhsm.MODULE_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(HsmUnavailable, match="does not name a file"):
        find_softhsm_module()
    monkeypatch.delenv(softhsm.MODULE_ENV)
    monkeypatch.setattr(softhsm, "MODULE_CANDIDATES", (tmp_path / "nope.so",))
    with pytest.raises(HsmUnavailable, match=r"libsofthsm2\.so not found"):
        find_softhsm_module()


_CHILD_SEES_TORN_TOKEN = """
import sys, time
from pathlib import Path
from vdno.server.domain.errors import HsmUnavailable
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.token import load_module
module, label, path, pin = sys.argv[1:5]
token_object = Path(path)
data = token_object.read_bytes()
token_object.write_bytes(b"")  # another process's login caught mid-rewrite
load_module(module)  # C_Initialize reads the token list now
token_object.write_bytes(data)
with Pkcs11Signer(module, label, pin) as signer:
    try:
        signer.check()
    except HsmUnavailable:
        print("unavailable")
    deadline = time.monotonic() + 5
    while True:
        try:
            signer.check()
            break
        except HsmUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
print("connected")
"""


def test_a_token_file_caught_mid_rewrite_at_start_up_is_found_again(
    hsm_token: SoftHsmToken, softhsm_module: Path, user_pin: str
) -> None:
    """SoftHSM keeps the token list it read at C_Initialize: a token whose file another process was
    rewriting then stays invisible to this process until the module is initialised again, which the
    signer's reconnection does in the background (the first check fails at once)."""
    token_object = next(
        p for p in hsm_token.token_dir.glob("*/token.object") if hsm_token.label.encode() in p.read_bytes()
    )
    saved = token_object.read_bytes()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD_SEES_TORN_TOKEN,
                str(softhsm_module),
                hsm_token.label,
                str(token_object),
                user_pin,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, SOFTHSM2_CONF=str(hsm_token.conf_path)),
            cwd=Path(__file__).resolve().parents[3],
        )
    finally:
        token_object.write_bytes(saved)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = [line for line in done.stdout.splitlines() if line in ("unavailable", "connected")]
    assert outcome == ["unavailable", "connected"]
    assert "hsm.recovered" in done.stdout  # structlog's default output


def test_token_initialisation_refusals_name_the_call_and_no_pin(
    hsm_token: SoftHsmToken, user_pin: str
) -> None:
    """C_InitToken through ctypes (server/hsm/_cki.py): a label SoftHSM cannot hold is refused before the
    call; a wrong SO PIN is refused by the token, which is left as it was."""
    module = str(hsm_token.module_path)
    slot = pkcs11.lib(module).get_token(token_label=hsm_token.label).slot
    with pytest.raises(ValueError, match="longer than 32 bytes"):
        _cki.init_token(module, slot.slot_id, "é" * 17, SO_PIN)
    with pytest.raises(_cki.CkiError) as refused:
        _cki.init_token(module, slot.slot_id, hsm_token.label, "not-the-so-pin")
    assert refused.value.operation == "C_InitToken" and refused.value.rv == _cki.CKR_PIN_INCORRECT
    assert "not-the-so-pin" not in str(refused.value) and SO_PIN not in str(refused.value)
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        assert list(session.get_objects({})) == []  # still the token it was, the user PIN still works
