"""Opening a logged-in session on a token, and (re)initialising the module.

Failures become domain errors through server/hsm/faults.py. Messages built here name the token label and
what failed, never a PIN, a CKR code name or a handle.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11e

from vdno.server.domain.errors import HsmUnavailable
from vdno.server.hsm import _cki
from vdno.server.hsm.faults import domain_error

_lib_lock = threading.Lock()


class ModuleGate:
    """Calls into one module from this process: token work enters `shared()` (any number of threads at
    once, each session still used by one thread at a time; a thread may enter again while inside),
    C_Finalize + C_Initialize enter `exclusive()` (alone: C_Finalize is undefined while other threads are
    inside the library, PKCS#11 v2.40 5.4.2). `generation` counts the (re)initialisations, so that
    signers whose sessions one reinitialisation ended do not each finalise the module again."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0  # threads inside shared()
        self._depth = threading.local()
        self._exclusive = False
        self._waiting = 0  # threads waiting for exclusive(): newcomers to shared() let them go first
        self.generation = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._depth, "value", 0)
        if not depth:
            with self._cond:
                while self._exclusive or self._waiting:
                    self._cond.wait()
                self._inside += 1
        self._depth.value = depth + 1
        try:
            yield
        finally:
            self._depth.value = depth
            if not depth:
                with self._cond:
                    self._inside -= 1
                    if not self._inside:
                        self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if getattr(self._depth, "value", 0):
            raise RuntimeError("a thread inside shared() cannot reinitialise the module")
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._inside:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_gates: dict[str, ModuleGate] = {}


def module_gate(module_path: str) -> ModuleGate:
    with _lib_lock:
        return _gates.setdefault(module_path, ModuleGate())


def load_module(module_path: str) -> Any:
    """`pkcs11.lib(module_path)`: dlopen + C_Initialize, once per process and path (again after a failed
    reinitialisation).

    SoftHSM reads SOFTHSM2_CONF at C_Initialize, so set the environment (see
    server.hsm.softhsm.ensure_softhsm_token) BEFORE the first call.
    """
    with _lib_lock:
        try:
            return pkcs11.lib(module_path)
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot load the PKCS#11 module {module_path}") from exc


def reinitialise(module_path: str, seen_generation: int | None = None) -> int:
    """C_Finalize + C_Initialize the module (SoftHSM reads its configuration and token directory again)
    and return the new generation. Every session of this process on the module ends. If the module was
    reinitialised since the caller saw `seen_generation`, nothing is done: the caller's session ended with
    that reinitialisation, and the module is as fresh as it can be."""
    gate = module_gate(module_path)
    with gate.exclusive():
        if seen_generation is not None and gate.generation != seen_generation:
            return gate.generation
        gate.generation += 1
        with _lib_lock:
            loaded = getattr(pkcs11, "_loaded", {}).get(module_path)
            try:
                if loaded is None:
                    pkcs11.lib(module_path)
                else:
                    loaded.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable(f"cannot initialise the PKCS#11 module {module_path}") from exc
        return gate.generation


def find_token(module_path: str, token_label: str) -> Any:
    """The token labelled `token_label`. SoftHSM lists tokens from what it read at C_Initialize: a token
    that went away and came back is seen again only after `reinitialise`."""
    lib = load_module(module_path)
    try:
        return lib.get_token(token_label=token_label)
    except p11e.NoSuchToken as exc:
        raise HsmUnavailable(f"PKCS#11 token {token_label!r} is not present") from exc
    except p11e.MultipleTokensReturned as exc:
        raise HsmUnavailable(f"more than one PKCS#11 token is labelled {token_label!r}") from exc
    except p11e.PKCS11Error as exc:
        raise domain_error(exc, token_label, "listing the tokens") from exc


def connect(module_path: str, token_label: str, pin: str, *, rw: bool = False) -> Any:
    """Open a session on the token and log the user in (C_Login through ctypes, see _cki): HsmUnavailable
    while the token cannot be reached, HsmLoginRefused when it refuses the PIN (server/hsm/faults.py).

    The returned python-pkcs11 Session believes it is not logged in, so `session.close()` never
    calls C_Logout and never logs out other sessions of this process on the same token.
    """
    token = find_token(module_path, token_label)
    try:
        session = token.open(rw=rw)
    except p11e.PKCS11Error as exc:
        raise domain_error(exc, token_label, "opening a session") from exc
    try:
        _cki.login(module_path, session.handle, pin)
    except _cki.CkiError as exc:
        close_quietly(session)
        raise domain_error(exc, token_label, "logging in") from exc
    return session


def check_token(session: Any) -> None:
    """C_GetTokenInfo on the session's slot: a PKCS11Error if the token is gone (a lookup alone cannot
    tell a missing key from a missing token)."""
    session.token.slot.get_token()


def close_quietly(session: Any) -> None:
    with suppress(p11e.PKCS11Error):
        session.close()


@contextmanager
def open_token_session(
    module_path: str | Any, token_label: str, pin: str, *, rw: bool = True
) -> Iterator[Any]:
    """A logged-in (R/W by default) session for bootstrap work: key generation, attribute reads, CSRs.

    Another process logging in rewrites SoftHSM's token files, and a token caught mid-rewrite stays
    unreadable to this process until the module is initialised again: so when the token cannot be
    reached, the module is reinitialised once and the session opened again (ending any other session of
    this process on the module). A refused PIN is not tried again.
    Not for concurrent use: python-pkcs11 sessions must be owned by one thread (docs/architecture.md §5.7).
    """
    path = str(module_path)
    gate = module_gate(path)
    seen = gate.generation
    with ExitStack() as inside:
        inside.enter_context(gate.shared())  # no signer of this process reinitialises the module meanwhile
        try:
            session = connect(path, token_label, pin, rw=rw)
        except HsmUnavailable:
            inside.close()
            reinitialise(path, seen)
            inside.enter_context(gate.shared())
            session = connect(path, token_label, pin, rw=rw)
        try:
            yield session
        except p11e.PKCS11Error as exc:  # what the key functions did not already name
            raise domain_error(exc, token_label, "an operation") from exc
        finally:
            close_quietly(session)
