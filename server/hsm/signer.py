"""Pkcs11Signer: the DigestSigner (server/domain/ports.py) backed by a PKCS#11 token that may come and go.

python-pkcs11 crashes when two threads call into one token at once (docs/architecture.md §5.7), so the session
has one owner at a time: every token call of the signer (signing, custody jobs, health probes, reconnection)
runs in the calling thread under its lock. In the server the issuance pipeline's thread signs and the health
monitor probes; they take turns. To scale, run more processes, or more signers (each owns its own session;
they may share a token: login is done so that closing one never logs the others out, see
server/hsm/_cki.py).

Failures are classified once, in server/hsm/faults.py:
* transient (token removed or not present, session lost, module not initialised, a key found earlier
  missing, ...): the call fails with HsmUnavailable and the session is dropped; a recovery thread then
  reinitialises the module (C_Finalize + C_Initialize: SoftHSM reads its configuration again), opens a new
  session, logs in and finds again every key found before, never reusing a handle of the old session. It
  tries at once, then after `reconnect_first` seconds, doubling up to `reconnect_max`. Until it succeeds
  every call fails at once with HsmUnavailable, without touching the token or waiting for its lock: an
  outage never holds up the caller's thread.
* the PIN refused: remembered. Every later call fails at once with HsmLoginRefused and C_Login is never
  called again (real HSMs lock a partition after a few failed logins); logged once, at error level.
* a key that fails its attribute checks, or was never found since start: KeyNotInCustody, and the key is
  looked up again on the next call.

Messages never carry the PIN, a CKR code name or a key handle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import ObjectClass
from pkcs11 import exceptions as p11e

from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, InvalidRequest, KeyNotInCustody
from vdno.server.hsm import _cki, faults
from vdno.server.hsm import keys as hsm_keys
from vdno.server.hsm.token import check_token, close_quietly, connect, module_gate, reinitialise
from vdno.server.hsm.uri import Pkcs11Uri, parse_pkcs11_uri

log = structlog.get_logger("vdno.hsm")

T = TypeVar("T")
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 5.0


class _Secret:
    """Holds the PIN so that repr(), vars() dumps and tracebacks show no value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class Pkcs11Signer:
    """Thread-safe signer over one PKCS#11 session at a time (see module docstring)."""

    def __init__(
        self,
        module_path: str | Path,
        token_label: str,
        pin: str,
        *,
        reconnect_first: float = RECONNECT_FIRST,
        reconnect_max: float = RECONNECT_MAX,
    ) -> None:
        if not 0 < reconnect_first <= reconnect_max:
            raise ValueError("reconnect delays must satisfy 0 < first <= max")
        self._module_path = str(module_path)
        self._token_label = token_label
        self._pin = _Secret(pin)
        self._gate = module_gate(self._module_path)
        self._reconnect_first = reconnect_first
        self._reconnect_max = reconnect_max
        # Owned by whoever holds _owner.
        self._owner = threading.Lock()
        self._session: Any = None
        self._generation: int | None = None  # the module's generation when the session was opened
        self._private_keys: dict[str, Any] = {}  # handles of the current session
        self._found: set[str] = set()  # keys found at least once by this signer
        # Read without the lock by the fast refusal; written under _owner.
        self._down: HsmUnavailable | None = None
        self._down_since = 0.0
        self._refused: HsmLoginRefused | None = None
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._recovery: threading.Thread | None = None
        # Shared state.
        self._public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._public_lock = threading.Lock()
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11Signer(module={self._module_path!r}, token={self._token_label!r})"

    def __enter__(self) -> Pkcs11Signer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the DigestSigner port ---------------------------------------------------------------------

    def sign_digest(self, key: str, digest: bytes) -> bytes:
        """64-byte raw r||s ECDSA (CKM_ECDSA) signature of a 32-byte SHA-256 digest."""
        _check_digest(digest)
        return self._submit(lambda session: self._sign(session, key, [digest]), "signing")[0]

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        """Several digests with one key, in one job (one turn of the lock)."""
        batch = list(digests)
        for digest in batch:
            _check_digest(digest)
        if not batch:
            return []
        return self._submit(lambda session: self._sign(session, key, batch), "signing")

    def public_key(self, key: str) -> ec.EllipticCurvePublicKey:
        """Public half of the pair named by the private-key URI (public object with the same label/id)."""
        with self._public_lock:
            cached = self._public_keys.get(key)
        if cached is not None:
            return cached
        public = self._submit(lambda session: self._find_public(session, key), "reading a public key")
        with self._public_lock:
            self._public_keys[key] = public
        return public

    def run(self, job: Callable[[Any], T], doing: str) -> T:
        """Run `job(session)` on this signer's session, serialised with its signing, its failures
        classified as a signature's are (custody work: key generation, CSRs, key deletion). The session is
        read-write."""
        return self._submit(job, doing)

    def forget(self, key: str) -> None:
        """Forget a key that was deliberately deleted (its handle, its public key, that it was ever found):
        looking it up again is then a missing key, not a token fault."""

        def job(session: Any) -> None:
            self._private_keys.pop(key, None)
            self._found.discard(key)

        self._submit(job, "forgetting a deleted key")
        with self._public_lock:
            self._public_keys.pop(key, None)

    # -- lifecycle and health ----------------------------------------------------------------------

    def check(self) -> None:
        """Open (or confirm) the session now: HsmUnavailable (reconnecting in the background) or
        HsmLoginRefused when the token is unusable."""
        self._submit(lambda session: None, "opening a session")

    def probe(self, keys: Iterable[str] = ()) -> None:
        """The health check, through the signer's lock and session: returns if the token answers and
        every key in `keys` and every key found before is in it and passes its attribute checks; else
        HsmUnavailable, HsmLoginRefused or KeyNotInCustody (at once while reconnecting or refused)."""
        wanted = list(keys)
        self._submit(lambda session: self._probe(session, wanted), "checking the token")

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever the signer becomes unavailable, recovers or has its PIN refused.
        It runs under the signer's lock: it must return at once (e.g. set an Event)."""
        self._listeners.append(listener)

    def close(self, timeout: float = 10.0) -> None:
        """Stop reconnecting, close the session after the call in progress. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        recovery = self._recovery
        if recovery is not None and recovery is not threading.current_thread() and recovery.ident is not None:
            recovery.join(timeout)
        with self._owner:
            self._drop_session()

    # -- internals: calls --------------------------------------------------------------------------

    def _refuse_fast(self) -> None:
        """Fail at once, without the lock, while the signer is closed, refused or reconnecting."""
        if self._closed:
            raise HsmUnavailable("the PKCS#11 signer is closed")
        refused = self._refused
        if refused is not None:
            raise HsmLoginRefused(str(refused))
        down = self._down
        if down is not None:
            raise HsmUnavailable(str(down))

    def _submit(self, job: Callable[[Any], T], doing: str) -> T:
        self._refuse_fast()
        with self._owner:
            if self._closed:
                raise HsmUnavailable("the PKCS#11 signer is closed")
            return self._call(job, doing)

    def _call(self, job: Callable[[Any], T], doing: str) -> T:
        """Run `job` on the session (opened if there is none yet); under _owner. A failure is classified
        (server/hsm/faults.py) and the signer goes down (transient) or refuses from now on (PIN)."""
        refused, down = self._refused, self._down
        if refused is not None:
            raise HsmLoginRefused(str(refused))
        if down is not None:
            raise HsmUnavailable(str(down))
        try:
            if self._session is None:
                self._open()
            with self._gate.shared():
                return job(self._session)
        except HsmLoginRefused as exc:
            self._refuse(exc)
            raise
        except HsmUnavailable as exc:
            self._go_down(exc, exc.__cause__ or exc)
            raise
        except (p11e.PKCS11Error, _cki.CkiError) as exc:
            error = faults.domain_error(exc, self._token_label, doing)
            if isinstance(error, HsmLoginRefused):
                self._refuse(error)
            else:
                self._go_down(error, exc)
            raise error from exc

    # -- internals: session state (under _owner) ---------------------------------------------------

    def _open(self) -> None:
        self._generation = self._gate.generation
        with self._gate.shared():
            self._session = connect(self._module_path, self._token_label, self._pin.reveal(), rw=True)
        self._private_keys.clear()

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._private_keys.clear()
        if session is not None:
            with self._gate.shared():
                close_quietly(session)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _go_down(self, error: HsmUnavailable, cause: BaseException) -> None:
        """From _call, which found the signer up (neither down nor refused) under the same hold of _owner.

        So no recovery is under way: a recovery thread ends, under _owner, by bringing the signer up or
        refusing the PIN. One that did so may still be alive for a moment after releasing _owner, so a new
        thread is started whatever is_alive() says (else that outage would never be recovered from)."""
        self._drop_session()
        self._down, self._down_since = error, time.monotonic()
        unexpected = (
            isinstance(cause, p11e.PKCS11Error | _cki.CkiError)
            and faults.classify(cause) is faults.Fault.UNEXPECTED
        )
        (log.error if unexpected else log.warning)(
            "hsm.unavailable",
            token=self._token_label,
            reason=str(error),
            cause=faults.cause_name(cause),
            unexpected=unexpected,
        )
        self._notify()
        if not self._closed:
            self._recovery = threading.Thread(
                target=self._recover, name=f"pkcs11-reconnect[{self._token_label}]", daemon=True
            )
            self._recovery.start()

    def _refuse(self, error: HsmLoginRefused) -> None:
        """From _call or _recover, each of which found the PIN not refused under the same hold of _owner:
        this is the one refusal, logged and notified once."""
        self._drop_session()
        self._down = None
        self._refused = error
        log.error(
            "hsm.pin_refused",
            token=self._token_label,
            reason=str(error),
            action="an operator must fix the PIN ([hsm] pin_file or pin_env) and restart the service; "
            "it is not tried again",
        )
        self._notify()

    def _recover(self) -> None:
        """The recovery thread: reconnect with exponential backoff until it works, the PIN is refused or
        the signer closes."""
        delay = self._reconnect_first
        attempts = 0
        while True:
            attempts += 1
            with self._owner:
                # close() sets _closed before _stop: a close during the backoff ends the wait below.
                if self._closed or self._refused is not None or self._down is None:
                    return
                try:
                    self._reconnect()
                except (HsmLoginRefused, HsmUnavailable, p11e.PKCS11Error, _cki.CkiError) as exc:
                    error = (
                        exc
                        if isinstance(exc, HsmLoginRefused | HsmUnavailable)
                        else faults.domain_error(exc, self._token_label, "reconnecting")
                    )
                    if isinstance(error, HsmLoginRefused):
                        self._refuse(error)
                        return
                    self._drop_session()
                    log.info(
                        "hsm.reconnect_failed",
                        token=self._token_label,
                        attempt=attempts,
                        reason=str(error),
                        cause=faults.cause_name(exc.__cause__ or exc),
                        retry_in_s=delay,
                    )
                else:
                    outage = time.monotonic() - self._down_since
                    self._down = None
                    log.warning(
                        "hsm.recovered", token=self._token_label, attempts=attempts, outage_s=round(outage, 3)
                    )
                    self._notify()
                    return
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._reconnect_max)

    def _reconnect(self) -> None:
        """A new session on a freshly initialised module, logged in, with every key found before found
        again (no handle of the old session survives). Public keys are read again too: a key pair may have
        been replaced while the token was away."""
        self._drop_session()
        with self._public_lock:
            self._public_keys.clear()
        self._generation = reinitialise(self._module_path, self._generation)
        self._open()
        with self._gate.shared():
            for key in sorted(self._found):
                try:
                    self._private_key(self._session, key, refresh=True)
                except KeyNotInCustody:  # fails its attribute checks now: its calls say so
                    continue

    # -- internals: jobs (under _owner, inside the gate) -------------------------------------------

    def _parse(self, key: str) -> Pkcs11Uri:
        try:
            uri = parse_pkcs11_uri(key)
        except InvalidRequest as exc:
            raise KeyNotInCustody(f"the configured key URI is not usable: {exc}") from exc
        if uri.type not in (None, "private"):
            raise KeyNotInCustody(f"the key URI {key!r} names a {uri.type} object, not a private key")
        if uri.token is not None and uri.token != self._token_label:
            raise KeyNotInCustody(
                f"the key URI names token {uri.token!r}, but this signer holds token {self._token_label!r}"
            )
        # The signer serves the configured module and token; a URI that narrows by anything else would
        # be silently served by them, so it is refused.
        unchecked = [
            name
            for name, value in (
                ("manufacturer", uri.manufacturer),
                ("serial", uri.serial),
                ("model", uri.model),
                ("module-path", uri.module_path),
                ("pin-source", uri.pin_source),
            )
            if value is not None
        ]
        if unchecked:
            raise KeyNotInCustody(
                f"the key URI {key!r} names {', '.join(unchecked)}; key URIs may name only token, object, "
                "id and type (the module and PIN come from the [hsm] settings)"
            )
        if uri.object is None and uri.id is None:
            raise KeyNotInCustody(f"the key URI {key!r} names no object (object= or id=)")
        return uri

    def _private_key(self, session: Any, key: str, refresh: bool = False) -> Any:
        handle = None if refresh else self._private_keys.get(key)
        if handle is None:
            self._private_keys.pop(key, None)
            uri = self._parse(key)
            try:
                handle = hsm_keys.find_key(session, ObjectClass.PRIVATE_KEY, uri.object, uri.id)
            except KeyNotInCustody as exc:
                error = faults.key_lookup_error(exc, self._token_label, key, key in self._found)
                if error is not exc:
                    raise error from exc
                check_token(session)  # a key never found: a missing token is transient, a missing key is not
                raise
            hsm_keys.check_custody(handle, key)
            self._private_keys[key] = handle
            self._found.add(key)
        return handle

    def _sign(self, session: Any, key: str, digests: list[bytes]) -> list[bytes]:
        private = self._private_key(session, key)
        return [hsm_keys.sign_digest_with(private, digest) for digest in digests]

    def _find_public(self, session: Any, key: str) -> ec.EllipticCurvePublicKey:
        uri = self._parse(key)
        try:
            return hsm_keys.public_key_of(session, uri.object, uri.id)
        except KeyNotInCustody:
            check_token(session)
            raise

    def _probe(self, session: Any, keys: list[str]) -> None:
        check_token(session)
        for key in dict.fromkeys([*keys, *sorted(self._found)]):
            self._private_key(session, key, refresh=True)


def _check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes | bytearray) or len(digest) != 32:
        raise ValueError("sign_digest takes a 32-byte SHA-256 digest")
