"""The two Cryptoki calls python-pkcs11 0.10 does not offer as vdno needs them, made through ctypes on
the SAME module.

* C_InitToken: python-pkcs11 has no token initialisation.
* C_Login on an already open session: python-pkcs11 only logs in inside `Token.open(user_pin=...)`,
  which (a) raises UserAlreadyLoggedIn and leaks the just-opened session when another session of this
  process is already logged in to the token (PKCS#11 login state is per application, not per
  session), and (b) remembers the session as "logged in" so that `Session.close()` calls C_Logout,
  which logs out EVERY session of the process on that token. Logging in here keeps python-pkcs11's
  session marked as "nobody": closing it never logs the others out, and "already logged in" is fine.

ctypes.CDLL(path) dlopen()s the module python-pkcs11 has already loaded, so both share one library
instance. python-pkcs11 must have called C_Initialize first (`pkcs11.lib(path)`); this module never
calls C_Initialize or C_Finalize. Linux/Unix only (CK_ULONG = unsigned long, default struct packing).
PINs pass only through memory, never argv or an error message.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import c_char_p, c_ulong

CKR_OK = 0x000
CKR_PIN_INCORRECT = 0x0A0
CKR_PIN_INVALID = 0x0A1
CKR_PIN_LEN_RANGE = 0x0A2
CKR_PIN_EXPIRED = 0x0A3
CKR_PIN_LOCKED = 0x0A4
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_USER_PIN_NOT_INITIALIZED = 0x102

CKU_USER = 1

PIN_REFUSED = frozenset(
    {
        CKR_PIN_INCORRECT,
        CKR_PIN_INVALID,
        CKR_PIN_LEN_RANGE,
        CKR_PIN_EXPIRED,
        CKR_PIN_LOCKED,
        CKR_USER_PIN_NOT_INITIALIZED,
    }
)

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


def module(path: str) -> ctypes.CDLL:
    with _lock:
        dll = _loaded.get(path)
        if dll is None:
            dll = ctypes.CDLL(path)
            dll.C_InitToken.argtypes = [c_ulong, c_char_p, c_ulong, c_char_p]
            dll.C_InitToken.restype = c_ulong
            dll.C_Login.argtypes = [c_ulong, c_ulong, c_char_p, c_ulong]
            dll.C_Login.restype = c_ulong
            _loaded[path] = dll
        return dll


class CkiError(Exception):
    """A Cryptoki return value other than CKR_OK. Internal: callers translate it (no PIN inside)."""

    def __init__(self, operation: str, rv: int) -> None:
        super().__init__(f"{operation} failed (0x{rv:x})")
        self.operation = operation
        self.rv = rv


def login(path: str, session_handle: int, pin: str) -> None:
    """C_Login as the user on an open session; 'already logged in' counts as success."""
    data = pin.encode("utf-8")
    rv = int(module(path).C_Login(session_handle, CKU_USER, data, len(data)))
    if rv not in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
        raise CkiError("C_Login", rv)


def init_token(path: str, slot_id: int, label: str, so_pin: str) -> None:
    """C_InitToken on an uninitialised slot (label padded to 32 bytes with blanks)."""
    encoded = label.encode("utf-8")
    if len(encoded) > 32:
        raise ValueError("token label is longer than 32 bytes")
    data = so_pin.encode("utf-8")
    rv = int(module(path).C_InitToken(slot_id, data, len(data), encoded.ljust(32, b" ")))
    if rv != CKR_OK:
        raise CkiError("C_InitToken", rv)


__all__ = ["CkiError", "init_token", "login", "module"]
