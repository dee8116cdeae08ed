"""The embedded default HSM: a SoftHSM v2 token under the server's state directory.

`ensure_softhsm_token(state_dir, label, user_pin, so_pin)` is idempotent:

1. writes <state_dir>/softhsm2.conf from softhsm-config/softhsm2.conf.template with the token
   directory <state_dir>/tokens (never the system one), unchanged if already right;
2. sets os.environ["SOFTHSM2_CONF"] for this process. libsofthsm2 reads that variable ONCE, at
   C_Initialize, i.e. at the first `pkcs11.lib(module)` of the process. A server that does not call
   this function must set SOFTHSM2_CONF itself (`activate_softhsm_conf`) before it loads the module;
   changing it later has no effect (SoftHSM keeps using the first token directory);
3. initialises a token with that label in a free slot if none exists, and its user PIN.

PINs never reach a command line (argv is visible in ps): softhsm2-util refuses to read PINs from a
pipe ("ERROR: Could not get SO PIN" without a terminal), so the token is initialised in-process:
C_InitToken on the same loaded module (server/hsm/_cki.py), then the user PIN through python-pkcs11
(an SO session and C_InitPIN).
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import TokenFlag
from pkcs11 import exceptions as p11e

from vdno.labpki.store import atomic_write
from vdno.server.config import ConfigError
from vdno.server.domain.errors import HsmUnavailable
from vdno.server.hsm import _cki
from vdno.server.hsm.token import load_module

MODULE_ENV = "VDNO_SOFTHSM_MODULE"
MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib64/pkcs11/libsofthsm2.so"),
    Path("/opt/homebrew/lib/softhsm/libsofthsm2.so"),
)
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "softhsm-config" / "softhsm2.conf.template"
_FALLBACK_TEMPLATE = "directories.tokendir = @TOKENDIR@\nobjectstore.backend = file\nlog.level = ERROR\n"

_lock = threading.Lock()
# module path -> the softhsm2.conf this process initialised it with.
_initialised_with: dict[str, Path] = {}


@dataclass(frozen=True)
class SoftHsmToken:
    conf_path: Path
    module_path: Path
    token_dir: Path
    label: str
    created: bool


def find_softhsm_module() -> Path:
    """libsofthsm2.so ($VDNO_SOFTHSM_MODULE, else the usual install places) or HsmUnavailable."""
    override = os.environ.get(MODULE_ENV)
    if override:
        path = Path(override)
        if path.is_file():
            return path
        raise HsmUnavailable(f"{MODULE_ENV}={override} does not name a file")
    for path in MODULE_CANDIDATES:
        if path.is_file():
            return path
    hint = (
        " (softhsm2-util is installed, so the module is somewhere unusual)"
        if shutil.which("softhsm2-util")
        else ""
    )
    raise HsmUnavailable(
        "SoftHSM v2 module libsofthsm2.so not found in "
        + ", ".join(str(p) for p in MODULE_CANDIDATES)
        + f"{hint}: install the softhsm2 package or set {MODULE_ENV}"
    )


def render_conf(token_dir: Path) -> str:
    template = TEMPLATE_PATH.read_text() if TEMPLATE_PATH.is_file() else _FALLBACK_TEMPLATE
    return template.replace("@TOKENDIR@", str(token_dir))


def write_conf(state_dir: Path) -> tuple[Path, Path]:
    """Write <state_dir>/softhsm2.conf (only if its content changes); returns (conf_path, token_dir)."""
    state_dir = Path(state_dir).resolve()
    token_dir = state_dir / "tokens"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf_path = state_dir / "softhsm2.conf"
    text = render_conf(token_dir)
    if not conf_path.is_file() or conf_path.read_text() != text:
        atomic_write(conf_path, text.encode(), mode=0o600)
    return conf_path, token_dir


def activate_softhsm_conf(conf_path: Path, module_path: Path) -> None:
    """Point this process's SoftHSM at conf_path (SOFTHSM2_CONF), before the module is initialised.

    If the module is already initialised in this process with another configuration, SoftHSM would
    silently keep using the old token directory: ConfigError instead.
    """
    key = str(module_path)
    conf_path = Path(conf_path).resolve()
    with _lock:
        previous = _initialised_with.get(key)
        loaded = key in getattr(pkcs11, "_loaded", {})
        if loaded and previous is None:
            env = os.environ.get("SOFTHSM2_CONF")
            previous = Path(env).resolve() if env else Path("/etc/softhsm/softhsm2.conf")
        os.environ["SOFTHSM2_CONF"] = str(conf_path)
        if loaded and previous != conf_path:
            raise ConfigError(
                f"SoftHSM in this process was initialised with {previous}; it reads SOFTHSM2_CONF only "
                f"at C_Initialize, so {conf_path} cannot take effect. Use one state dir per process."
            )
        _initialised_with[key] = conf_path


def ensure_softhsm_token(
    state_dir: Path,
    label: str,
    user_pin: str,
    so_pin: str,
    *,
    module_path: Path | None = None,
) -> SoftHsmToken:
    """Idempotently make a SoftHSM token `label` under state_dir (see the module docstring)."""
    encoded = label.encode("utf-8")
    if not encoded or len(encoded) > 32:
        raise ValueError("a token label is 1 to 32 bytes of UTF-8")
    if not 4 <= len(user_pin) <= 255 or not 4 <= len(so_pin) <= 255:
        raise ValueError("SoftHSM PINs are 4 to 255 characters long")
    module = Path(module_path) if module_path is not None else find_softhsm_module()
    conf_path, token_dir = write_conf(Path(state_dir))
    activate_softhsm_conf(conf_path, module)
    lib = load_module(str(module))
    module_key = str(module)
    created = False
    with _lock:  # bootstrap is single-threaded, but two callers must not init two tokens
        try:
            slot, flags = _find_token_slot(lib, label)
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot list the SoftHSM slots for token {label!r}") from exc
        try:
            if slot is None:
                slot = _free_slot(lib)
                _cki.init_token(module_key, slot.slot_id, label, so_pin)
                created = True
                flags = TokenFlag(0)
            if not flags & TokenFlag.USER_PIN_INITIALIZED:
                # Freshly made, or a previous run stopped between C_InitToken and C_InitPIN.
                with slot.get_token().open(rw=True, so_pin=so_pin) as session:
                    session.init_pin(user_pin)
        except _cki.CkiError as exc:
            raise HsmUnavailable(
                f"cannot initialise SoftHSM token {label!r} ({exc.operation} failed)"
            ) from exc
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(
                f"cannot initialise SoftHSM token {label!r} (setting its user PIN failed)"
            ) from exc
    return SoftHsmToken(conf_path, module, token_dir, label, created)


def _find_token_slot(lib: Any, label: str) -> tuple[Any, TokenFlag]:
    found = []
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        if token.flags & TokenFlag.TOKEN_INITIALIZED and token.label == label:
            found.append((slot, token.flags))
    if len(found) > 1:
        raise HsmUnavailable(f"more than one SoftHSM token is labelled {label!r}")
    return found[0] if found else (None, TokenFlag(0))


def _free_slot(lib: Any) -> Any:
    for slot in lib.get_slots(token_present=True):
        if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED:
            return slot
    raise HsmUnavailable("SoftHSM offers no free slot to initialise a token in")
