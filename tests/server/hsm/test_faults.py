"""The classification of PKCS#11 failures (server/hsm/faults.py): every python-pkcs11 exception class and
the return values of the ctypes calls, each to its domain error."""

from __future__ import annotations

import inspect

import pytest
from pkcs11 import exceptions as p11e

from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, KeyNotInCustody
from vdno.server.hsm import _cki
from vdno.server.hsm.faults import Fault, cause_name, classify, domain_error, key_lookup_error

TRANSIENT = {
    "DeviceRemoved",
    "TokenNotPresent",
    "TokenNotRecognised",
    "NoSuchToken",
    "SessionHandleInvalid",
    "SessionClosed",
    "DeviceError",
    "GeneralError",
    "UserNotLoggedIn",
    "KeyHandleInvalid",
    "ObjectHandleInvalid",
}
PIN_REFUSED = {
    "PinIncorrect",
    "PinInvalid",
    "PinLenRange",
    "PinExpired",
    "PinLocked",
    "UserPinNotInitialized",
}
EVERY_CLASS = sorted(
    (cls for _, cls in inspect.getmembers(p11e, inspect.isclass) if issubclass(cls, p11e.PKCS11Error)),
    key=lambda cls: cls.__name__,
)


def expected_fault(name: str) -> Fault:
    if name in PIN_REFUSED:
        return Fault.PIN_REFUSED
    return Fault.TRANSIENT if name in TRANSIENT else Fault.UNEXPECTED


def test_the_table_names_only_classes_python_pkcs11_has() -> None:
    names = {cls.__name__ for cls in EVERY_CLASS}
    assert names >= TRANSIENT and names >= PIN_REFUSED
    assert len(EVERY_CLASS) > 60  # the whole exception module, not a few


@pytest.mark.parametrize("cls", EVERY_CLASS, ids=lambda cls: cls.__name__)
def test_every_python_pkcs11_error_becomes_its_domain_error(cls: type[p11e.PKCS11Error]) -> None:
    exc = cls()
    fault = expected_fault(cls.__name__)
    assert classify(exc) is fault
    error = domain_error(exc, "vdno", "signing")
    if fault is Fault.PIN_REFUSED:
        assert isinstance(error, HsmLoginRefused)
        assert str(error) == (
            "PKCS#11 token 'vdno' refused the configured PIN; an operator must fix the PIN and restart "
            "the service"
        )
    else:  # transient, and anything unexpected, is an outage: reconnect, answer UNAVAILABLE
        assert isinstance(error, HsmUnavailable)
        assert str(error) == "PKCS#11 token 'vdno' is unavailable (signing failed); retry later"
    assert "CKR" not in str(error) and cls.__name__ not in str(error)


def test_cryptoki_not_initialised_is_transient() -> None:
    # python-pkcs11 has no class for CKR_CRYPTOKI_NOT_INITIALIZED: a bare PKCS11Error with this text.
    exc = p11e.PKCS11Error("Initialisation error (not initialized). Should never see this.")
    assert classify(exc) is Fault.TRANSIENT
    assert cause_name(exc) == "CKR_CRYPTOKI_NOT_INITIALIZED"
    assert classify(p11e.PKCS11Error("Unmapped error code 0x80000001")) is Fault.UNEXPECTED


@pytest.mark.parametrize(
    ("rv", "fault"),
    [
        (0x005, Fault.TRANSIENT),  # CKR_GENERAL_ERROR
        (0x030, Fault.TRANSIENT),  # CKR_DEVICE_ERROR
        (0x032, Fault.TRANSIENT),  # CKR_DEVICE_REMOVED
        (0x0B0, Fault.TRANSIENT),  # CKR_SESSION_CLOSED
        (0x0B3, Fault.TRANSIENT),  # CKR_SESSION_HANDLE_INVALID
        (0x0E0, Fault.TRANSIENT),  # CKR_TOKEN_NOT_PRESENT
        (0x0E1, Fault.TRANSIENT),  # CKR_TOKEN_NOT_RECOGNIZED
        (0x101, Fault.TRANSIENT),  # CKR_USER_NOT_LOGGED_IN
        (0x190, Fault.TRANSIENT),  # CKR_CRYPTOKI_NOT_INITIALIZED
        (_cki.CKR_PIN_INCORRECT, Fault.PIN_REFUSED),
        (_cki.CKR_PIN_INVALID, Fault.PIN_REFUSED),
        (_cki.CKR_PIN_LEN_RANGE, Fault.PIN_REFUSED),
        (_cki.CKR_PIN_EXPIRED, Fault.PIN_REFUSED),
        (_cki.CKR_PIN_LOCKED, Fault.PIN_REFUSED),
        (_cki.CKR_USER_PIN_NOT_INITIALIZED, Fault.PIN_REFUSED),
        (0x006, Fault.UNEXPECTED),  # CKR_FUNCTION_FAILED
        (0x007, Fault.UNEXPECTED),  # CKR_ARGUMENTS_BAD
        (0x104, Fault.UNEXPECTED),  # CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    ],
)
def test_c_login_return_values(rv: int, fault: Fault) -> None:
    exc = _cki.CkiError("C_Login", rv)
    assert classify(exc) is fault
    error = domain_error(exc, "vdno", "logging in")
    assert isinstance(error, HsmLoginRefused if fault is Fault.PIN_REFUSED else HsmUnavailable)
    assert "CKR" not in str(error) and f"{rv:x}" not in str(error)
    assert cause_name(exc).startswith("C_Login: ")


def _not_found() -> KeyNotInCustody:
    try:
        raise KeyNotInCustody("no private EC key labelled 'k' in the token") from p11e.NoSuchKey("none")
    except KeyNotInCustody as exc:
        return exc


def test_a_key_not_found_is_transient_only_if_it_was_found_before() -> None:
    missing = _not_found()
    assert key_lookup_error(missing, "vdno", "pkcs11:object=k", found_before=False) is missing
    again = key_lookup_error(missing, "vdno", "pkcs11:object=k", found_before=True)
    assert isinstance(again, HsmUnavailable)
    assert "found in PKCS#11 token 'vdno' earlier" in str(again)
    # Failing its attribute checks stays fatal (KeyNotInCustody), found before or not.
    unfit = KeyNotInCustody("key pkcs11:object=k fails its attribute checks: extractable")
    assert key_lookup_error(unfit, "vdno", "pkcs11:object=k", found_before=True) is unfit


def test_cause_names_name_the_ckr_code_or_the_class_and_nothing_else() -> None:
    """What a log line's cause_name says: the operation and the CKR name of a ctypes call (its number in
    hex when unnamed), the CKR name of python-pkcs11's bare not-initialised error, else the class name."""
    assert cause_name(_cki.CkiError("C_Login", _cki.CKR_PIN_INCORRECT)) == "C_Login: CKR_PIN_INCORRECT"
    assert cause_name(_cki.CkiError("C_Sign", 0x0B3)) == "C_Sign: CKR_SESSION_HANDLE_INVALID"
    assert cause_name(_cki.CkiError("C_Login", 0x104)) == "C_Login: 0x104"
    assert cause_name(p11e.SessionClosed()) == "SessionClosed"
    assert cause_name(ValueError("x")) == "ValueError"
    # the not-initialised text only counts on python-pkcs11's bare error class
    assert cause_name(p11e.PKCS11Error("Unmapped error code 0x80000001")) == "PKCS11Error"
    assert cause_name(p11e.DeviceError("Initialisation error (not initialized)")) == "DeviceError"
    assert cause_name(RuntimeError("Initialisation error (not initialized)")) == "RuntimeError"
    assert classify(RuntimeError("Initialisation error (not initialized)")) is Fault.UNEXPECTED
