"""Opening a logged-in session on a token, and the translation of PKCS#11 failures into domain errors.

Messages built here name the token label and what failed, never a PIN, a CKR code name or a handle.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11e

from server.domain.errors import HsmUnavailable
from server.hsm import _cki

# Failures after which the session (not the request) is broken: reconnect once and retry.
SESSION_LOST_ERRORS: tuple[type[BaseException], ...] = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
    p11e.DeviceError,
)

_lib_lock = threading.Lock()


def load_module(module_path: str) -> Any:
    """`pkcs11.lib(module_path)`: dlopen + C_Initialize, once per process and path.

    SoftHSM reads SOFTHSM2_CONF during this first C_Initialize and never again (unless finalised),
    so set the environment (see server.hsm.softhsm.ensure_softhsm_token) BEFORE the first call.
    """
    with _lib_lock:
        try:
            return pkcs11.lib(module_path)
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot load the PKCS#11 module {module_path}") from exc


def find_token(module_path: str, token_label: str) -> Any:
    """The token labelled `token_label`. SoftHSM lists tokens from what it read at C_Initialize, and
    another process logging in rewrites the token's files: a token caught mid-rewrite stays unreadable
    to this process until the module is initialised again. So on failure, reinitialise once and retry
    (this closes any other session of this process on the module; callers reconnect)."""
    lib = load_module(module_path)
    try:
        return _token_labelled(lib, module_path, token_label)
    except HsmUnavailable:
        with _lib_lock:
            try:
                lib.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable(f"cannot reinitialise the PKCS#11 module {module_path}") from exc
        return _token_labelled(lib, module_path, token_label)


def _token_labelled(lib: Any, module_path: str, token_label: str) -> Any:
    try:
        return lib.get_token(token_label=token_label)
    except p11e.NoSuchToken as exc:
        raise HsmUnavailable(f"PKCS#11 token {token_label!r} is not present") from exc
    except p11e.MultipleTokensReturned as exc:
        raise HsmUnavailable(f"more than one PKCS#11 token is labelled {token_label!r}") from exc
    except p11e.PKCS11Error as exc:
        raise HsmUnavailable(f"cannot list the tokens of {module_path}") from exc


def connect(module_path: str, token_label: str, pin: str, *, rw: bool = False) -> Any:
    """Open a session on the token and log the user in (C_Login through ctypes, see _cki).

    The returned python-pkcs11 Session believes it is not logged in, so `session.close()` never
    calls C_Logout and never logs out other sessions of this process on the same token.
    """
    token = find_token(module_path, token_label)
    try:
        session = token.open(rw=rw)
    except p11e.PKCS11Error as exc:
        raise HsmUnavailable(f"cannot open a session on PKCS#11 token {token_label!r}") from exc
    try:
        _cki.login(module_path, session.handle, pin)
    except _cki.CkiError as exc:
        close_quietly(session)
        if exc.rv in _cki.PIN_REFUSED:
            raise HsmUnavailable(f"login to PKCS#11 token {token_label!r} was refused") from exc
        raise HsmUnavailable(f"cannot log in to PKCS#11 token {token_label!r}") from exc
    return session


def close_quietly(session: Any) -> None:
    with suppress(p11e.PKCS11Error):
        session.close()


@contextmanager
def open_token_session(
    module_path: str | Any, token_label: str, pin: str, *, rw: bool = True
) -> Iterator[Any]:
    """A logged-in (R/W by default) session for bootstrap work: key generation, attribute reads, CSRs.

    Not for concurrent use: python-pkcs11 sessions must be owned by one thread (ARCHITECTURE §5.7).
    """
    session = connect(str(module_path), token_label, pin, rw=rw)
    try:
        yield session
    except p11e.PKCS11Error as exc:  # what the key functions did not already name
        raise HsmUnavailable(f"PKCS#11 token {token_label!r} failed an operation") from exc
    finally:
        close_quietly(session)
