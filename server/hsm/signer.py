"""Pkcs11Signer: the DigestSigner (server/domain/ports.py) backed by a PKCS#11 token.

python-pkcs11 crashes when two threads call into one token at once (ARCHITECTURE §5.7), so the single
session has one owner and calls are serialised. By default a dedicated worker thread owns it: every
call, from any thread, becomes a job on a queue that the worker runs while the caller waits on a
concurrent.futures.Future. With worker_thread=False (the server: the issuance pipeline's thread is the
only caller), jobs run in the calling thread under a lock, without the two hand-offs. To scale, run more
processes, or more signers (each owns its own session; they may share a token: login is done so that
closing one never logs the others out, see server/hsm/_cki.py).

PKCS#11 errors are translated once, here, into server.domain.errors (HsmUnavailable for token, login
and session trouble; KeyNotInCustody for a key that is missing or fails its attribute checks). A lost
session (closed, invalid handle, device removed, token absent, logged out) is reopened once and the
job retried. Messages never carry the PIN, a CKR code name or a key handle.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import ObjectClass
from pkcs11 import exceptions as p11e

from server.domain.errors import HsmUnavailable, InvalidRequest, KeyNotInCustody
from server.hsm import keys as hsm_keys
from server.hsm.token import SESSION_LOST_ERRORS, close_quietly, connect
from server.hsm.uri import Pkcs11Uri, parse_pkcs11_uri

log = logging.getLogger(__name__)

T = TypeVar("T")
# Seconds a caller waits for the worker thread to run its job before the token counts as unavailable.
JOB_TIMEOUT = 60.0

# A cached key handle went stale (object deleted/recreated): forget the cache and look it up again.
_STALE_HANDLE_ERRORS: tuple[type[BaseException], ...] = (p11e.KeyHandleInvalid, p11e.ObjectHandleInvalid)


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
    """Thread-safe signer over one PKCS#11 session, used by one thread at a time (see module docstring)."""

    def __init__(
        self,
        module_path: str | Path,
        token_label: str,
        pin: str,
        *,
        worker_thread: bool = True,
    ) -> None:
        self._module_path = str(module_path)
        self._token_label = token_label
        self._pin = _Secret(pin)
        # Worker-thread state only.
        self._session: Any = None
        self._private_keys: dict[str, Any] = {}
        # Shared state.
        self._public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._public_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._closed = False
        # Without a worker thread, jobs run in the calling thread, one at a time under this lock: for a
        # single caller that batches its own work (the issuance pipeline), saving two hand-offs per job.
        self._inline: threading.Lock | None = None if worker_thread else threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"pkcs11-signer[{token_label}]", daemon=True)
        if worker_thread:
            self._thread.start()

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
        return self._submit(lambda session: self._sign(session, key, [digest]))[0]

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        """Several digests with one key, in one job (one trip through the queue)."""
        batch = list(digests)
        for digest in batch:
            _check_digest(digest)
        if not batch:
            return []
        return self._submit(lambda session: self._sign(session, key, batch))

    def public_key(self, key: str) -> ec.EllipticCurvePublicKey:
        """Public half of the pair named by the private-key URI (public object with the same label/id)."""
        with self._public_lock:
            cached = self._public_keys.get(key)
        if cached is not None:
            return cached
        public = self._submit(lambda session: self._find_public(session, key))
        with self._public_lock:
            self._public_keys[key] = public
        return public

    def run(self, job: Callable[[Any], T]) -> T:
        """Run `job(session)` on this signer's session, serialised with its signing (custody work: key
        generation, CSRs, key deletion). The session is read-write."""
        return self._submit(job)

    def forget(self, key: str) -> None:
        """Drop what the signer remembers of a key (its handle and public key), e.g. after deleting it."""
        self._submit(lambda session: self._private_keys.pop(key, None))
        with self._public_lock:
            self._public_keys.pop(key, None)

    # -- lifecycle ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Open (or confirm) the session now; raises HsmUnavailable when the token is unusable."""
        self._submit(lambda session: None)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the jobs already queued, and close the session. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            if self._inline is not None:
                with self._inline:
                    self._drop_session()
                return
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- internals ---------------------------------------------------------------------------------

    def _submit(self, job: Callable[[Any], T]) -> T:
        if self._inline is not None:
            with self._inline:
                if self._closed:
                    raise HsmUnavailable("the PKCS#11 signer is closed")
                return self._with_session(job)
        future: Future[T] = Future()
        with self._state_lock:
            if self._closed:
                raise HsmUnavailable("the PKCS#11 signer is closed")
            if not self._thread.is_alive():
                raise HsmUnavailable("the PKCS#11 signer thread has stopped")
            self._queue.put((job, future))
        try:
            return future.result(timeout=JOB_TIMEOUT)
        except TimeoutError as exc:
            future.cancel()  # dropped if the worker has not started it yet
            raise HsmUnavailable(f"PKCS#11 token {self._token_label!r} did not answer in time") from exc

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                job, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(self._with_session(job))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            self._drop_session()
            # Anything queued after the stop (cannot happen through _submit) must not hang.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None and item[1].set_running_or_notify_cancel():
                    item[1].set_exception(HsmUnavailable("the PKCS#11 signer is closed"))

    def _with_session(self, job: Callable[[Any], T]) -> T:
        for attempt in (1, 2):
            session = self._ensure_session()
            try:
                return job(session)
            except SESSION_LOST_ERRORS as exc:
                log.warning(
                    "pkcs11 session to token %r lost (%s); reconnecting",
                    self._token_label,
                    type(exc).__name__,
                )
                self._drop_session()
                if attempt == 2:
                    raise HsmUnavailable(f"lost the session to PKCS#11 token {self._token_label!r}") from exc
            except _STALE_HANDLE_ERRORS as exc:
                self._private_keys.clear()
                if attempt == 2:
                    raise HsmUnavailable(
                        f"PKCS#11 token {self._token_label!r} rejected a key it listed"
                    ) from exc
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable(f"PKCS#11 token {self._token_label!r} failed the operation") from exc
        raise AssertionError("unreachable")

    def _ensure_session(self) -> Any:
        if self._session is None:
            self._session = connect(self._module_path, self._token_label, self._pin.reveal(), rw=True)
            self._private_keys.clear()
        return self._session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._private_keys.clear()
        if session is not None:
            close_quietly(session)

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

    def _private_key(self, session: Any, key: str) -> Any:
        handle = self._private_keys.get(key)
        if handle is None:
            uri = self._parse(key)
            handle = hsm_keys.find_key(session, ObjectClass.PRIVATE_KEY, uri.object, uri.id)
            hsm_keys.check_custody(handle, key)
            self._private_keys[key] = handle
        return handle

    def _sign(self, session: Any, key: str, digests: list[bytes]) -> list[bytes]:
        private = self._private_key(session, key)
        return [hsm_keys.sign_digest_with(private, digest) for digest in digests]

    def _find_public(self, session: Any, key: str) -> ec.EllipticCurvePublicKey:
        uri = self._parse(key)
        return hsm_keys.public_key_of(session, uri.object, uri.id)


def _check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes | bytearray) or len(digest) != 32:
        raise ValueError("sign_digest takes a 32-byte SHA-256 digest")
