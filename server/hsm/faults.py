"""The one classification of PKCS#11 failures, and the domain errors they become.

* transient -> HsmUnavailable (nothing was signed; the signer reconnects in the background; the caller
  retries with the same request id): device removed, token not present or not recognised, session handle
  invalid or closed, device error, general error, cryptoki not initialised, user not logged in, a key
  handle that is no longer valid, and a key found earlier in this process that is not found now;
* fatal until an operator fixes it: the PIN refused (incorrect, invalid, out of range, expired, locked,
  never set) -> HsmLoginRefused, never tried again; a key failing its attribute checks -> KeyNotInCustody
  (server/hsm/keys.py), and a key never found since start stays KeyNotInCustody (looked up again on each
  call: a lookup cannot lock anything);
* anything else PKCS#11 reports is unexpected: handled as transient (reconnect) and logged as an error.

Messages name the token and what failed, never the PIN, a CKR code or a handle. Log lines may carry
`cause_name` (a class or CKR name: no secret in it).
"""

from __future__ import annotations

import enum

from pkcs11 import exceptions as p11e

from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, KeyNotInCustody
from vdno.server.hsm import _cki


class Fault(enum.Enum):
    TRANSIENT = "transient"
    PIN_REFUSED = "pin refused"
    UNEXPECTED = "unexpected"


TRANSIENT_ERRORS: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.NoSuchToken,  # python-pkcs11: no slot holds a token with the label
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.DeviceError,
    p11e.GeneralError,
    p11e.UserNotLoggedIn,
    p11e.KeyHandleInvalid,  # only handles found earlier exist: the key was there
    p11e.ObjectHandleInvalid,
)

PIN_ERRORS: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinExpired,
    p11e.PinLocked,
    p11e.UserPinNotInitialized,
)

# python-pkcs11 raises a bare PKCS11Error with this text for CKR_CRYPTOKI_NOT_INITIALIZED.
_NOT_INITIALISED_TEXT = "Initialisation error (not initialized)"

# Return values of the Cryptoki calls made through ctypes (server/hsm/_cki.py), PKCS#11 v2.40 5.1.
CKR_NAMES: dict[int, str] = {
    0x005: "CKR_GENERAL_ERROR",
    0x006: "CKR_FUNCTION_FAILED",
    0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY",
    0x032: "CKR_DEVICE_REMOVED",
    0x0B0: "CKR_SESSION_CLOSED",
    0x0B3: "CKR_SESSION_HANDLE_INVALID",
    0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    _cki.CKR_PIN_INCORRECT: "CKR_PIN_INCORRECT",
    _cki.CKR_PIN_INVALID: "CKR_PIN_INVALID",
    _cki.CKR_PIN_LEN_RANGE: "CKR_PIN_LEN_RANGE",
    _cki.CKR_PIN_EXPIRED: "CKR_PIN_EXPIRED",
    _cki.CKR_PIN_LOCKED: "CKR_PIN_LOCKED",
    _cki.CKR_USER_PIN_NOT_INITIALIZED: "CKR_USER_PIN_NOT_INITIALIZED",
}
TRANSIENT_RVS = frozenset({0x005, 0x030, 0x032, 0x0B0, 0x0B3, 0x0E0, 0x0E1, 0x101, 0x190})


def classify(exc: BaseException) -> Fault:
    """The fault a python-pkcs11 error or a ctypes Cryptoki error (_cki.CkiError) stands for."""
    if isinstance(exc, _cki.CkiError):
        if exc.rv in _cki.PIN_REFUSED:
            return Fault.PIN_REFUSED
        return Fault.TRANSIENT if exc.rv in TRANSIENT_RVS else Fault.UNEXPECTED
    if isinstance(exc, PIN_ERRORS):
        return Fault.PIN_REFUSED
    if isinstance(exc, TRANSIENT_ERRORS):
        return Fault.TRANSIENT
    if type(exc) is p11e.PKCS11Error and str(exc).startswith(_NOT_INITIALISED_TEXT):
        return Fault.TRANSIENT
    return Fault.UNEXPECTED


def cause_name(exc: BaseException) -> str:
    """What failed, for a log line: the exception class, or the CKR name of a ctypes call."""
    if isinstance(exc, _cki.CkiError):
        return f"{exc.operation}: {CKR_NAMES.get(exc.rv, f'0x{exc.rv:x}')}"
    if type(exc) is p11e.PKCS11Error and str(exc).startswith(_NOT_INITIALISED_TEXT):
        return "CKR_CRYPTOKI_NOT_INITIALIZED"
    return type(exc).__name__


def domain_error(exc: BaseException, token_label: str, doing: str) -> HsmUnavailable | HsmLoginRefused:
    """The domain error for a PKCS#11 failure while `doing` (e.g. "signing"); raise it `from exc`."""
    if classify(exc) is Fault.PIN_REFUSED:
        return HsmLoginRefused(
            f"PKCS#11 token {token_label!r} refused the configured PIN; an operator must fix the PIN "
            "and restart the service"
        )
    return HsmUnavailable(f"PKCS#11 token {token_label!r} is unavailable ({doing} failed); retry later")


def key_lookup_error(
    error: KeyNotInCustody, token_label: str, key: str, found_before: bool
) -> HsmUnavailable | KeyNotInCustody:
    """A key lookup that failed: transient if the key was found earlier in this process and is not
    found now (the token is not what it was: reconnect), else the KeyNotInCustody itself."""
    if found_before and isinstance(error.__cause__, p11e.NoSuchKey):
        return HsmUnavailable(
            f"key {key} was found in PKCS#11 token {token_label!r} earlier and is not found now; retry later"
        )
    return error
