"""The one interceptor: identifies the caller from its verified client certificate and checks that its role
may call the service (server/rpc/identity.py), logs the call with a request id (and what the servicer noted
of the parsed request: note_call), tells a CallObserver (metrics) of answered and refused calls, and maps
domain errors to gRPC status codes with their safe message. Anything else becomes INTERNAL with a generic
message and a reference id; its details stay in the server log."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

import grpc
import structlog

from vdno.server.domain import errors as e
from vdno.server.rpc.identity import Caller, CallerCache, Role

STATUS_BY_ERROR: tuple[tuple[type[e.VdnoError], grpc.StatusCode], ...] = (
    (e.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.UnknownArea, grpc.StatusCode.NOT_FOUND),
    (e.UnknownIssuance, grpc.StatusCode.NOT_FOUND),
    (e.UnknownOrder, grpc.StatusCode.NOT_FOUND),
    (e.UnknownDevice, grpc.StatusCode.NOT_FOUND),
    (e.UnknownGeneration, grpc.StatusCode.NOT_FOUND),
    (e.UnknownApprovalRequest, grpc.StatusCode.NOT_FOUND),
    (e.PolicyRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (e.HsmLoginRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (e.RequestIdConflict, grpc.StatusCode.ALREADY_EXISTS),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.SignatureCheckFailed, grpc.StatusCode.INTERNAL),
)


def status_for(error: e.VdnoError) -> grpc.StatusCode:
    for kind, code in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class UndecodableRequest:
    """What the interceptor's request deserializer returns for bytes that are not the method's request
    message: the call is answered INVALID_ARGUMENT (once the caller is identified), not gRPC's INTERNAL
    with a traceback in the log."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def tolerant_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def read(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever else malformed bytes raise
            return UndecodableRequest(" ".join(str(exc).split())[:160] or type(exc).__name__)

    return read


class CallObserver(Protocol):
    """Told of calls as they are answered (server/metrics.py); every method returns at once."""

    def latency(self, method: str) -> Callable[[float], None] | None:
        """Where the seconds of each call of `method` answered OK go (None: not timed). Asked once per
        method."""
        ...

    def refused(self, reason: str, code: str) -> None:
        """A call answered with an error: `reason` the error's class name (unexpected: INTERNAL)."""
        ...


def _peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    certificates = context.auth_context().get("x509_pem_cert") or []
    return bytes(certificates[0]) if certificates else None


# The caller of this call, set by the interceptor after checking its role (auth_context() copies every TLS
# property, so it is read once per call).
_CALLER: ContextVar[Caller | None] = ContextVar("vdno_caller", default=None)
# What the servicer noted of this call's parsed request, for its log line (note_call).
_NOTES: ContextVar[dict[str, object] | None] = ContextVar("vdno_call_notes", default=None)

# Which role may call which service (the method path is /<package>.<Service>/<Method>).
ROLE_OF_SERVICE = {
    "vdno.v1.BenchService": Role.BENCH,
    "vdno.v1.CustodyService": Role.OFFICER,
    "vdno.v1.AuditService": Role.OFFICER,
}


def _current(role: Role) -> Caller:
    caller = _CALLER.get()
    if caller is None or caller.role is not role:
        raise e.Unauthenticated("a client certificate naming the caller and its role is required")
    return caller


def note_call(**fields: object) -> None:
    """Add fields of the parsed request (the device, the area, the bench's request id) to this call's
    log line. Only validated values: a note is logged as it is."""
    notes = _NOTES.get()
    if notes is not None:
        notes.update(fields)


def bench_caller() -> Caller:
    """The calling bench (its id, and the fingerprint of the certificate it presented)."""
    return _current(Role.BENCH)


def bench_identity() -> str:
    """The calling bench's id: the CN of its verified client certificate (role checked by the interceptor)."""
    return _current(Role.BENCH).name


def officer_identity() -> str:
    """The calling officer's id: the CN of its verified client certificate (role checked by the
    interceptor)."""
    return _current(Role.OFFICER).name


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        on_refused_auth: Callable[[str, str], None] | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self._log = structlog.get_logger()
        self._on_refused_auth = on_refused_auth
        self._observer = observer
        self._wrapped: dict[str, Any] = {}  # method -> wrapped handler (handlers are fixed at start-up)
        self._callers = CallerCache()
        # Request ids: random per process, then counted (no system call per call).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        if method.startswith("/grpc."):  # health and reflection are not ours to wrap
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        inner = handler.unary_unary
        log = self._log
        on_refused = self._on_refused_auth
        prefix, ids = self._id_prefix, self._ids
        callers = self._callers
        required = ROLE_OF_SERVICE.get(
            method.rpartition("/")[0].removeprefix("/")
        )  # /<package>.<Service>/<Method>
        observer = self._observer
        timed = observer.latency(method) if observer is not None else None

        def identify(context: grpc.ServicerContext) -> Caller:
            certificate = _peer_certificate(context)
            if certificate is None:
                raise e.Unauthenticated("a client certificate naming the caller is required")
            return callers.caller(certificate)

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = f"{prefix}{next(ids):010x}"
            caller: Caller | None = None
            caller_token = _CALLER.set(None)
            notes: dict[str, object] = {}
            notes_token = _NOTES.set(notes)
            started = time.perf_counter()
            try:
                caller = identify(context)
                if caller.role is not required:
                    raise e.WrongRole(f"a {caller.role.value} certificate may not call {method}")
                _CALLER.set(caller)
                if isinstance(request, UndecodableRequest):
                    raise e.InvalidRequest(f"the request message does not decode: {request.reason}")
                response = inner(request, context)
                seconds = time.perf_counter() - started
                if timed is not None:
                    timed(seconds)
                log.info(
                    "rpc.ok",
                    rpc_id=request_id,
                    method=method,
                    caller=caller.actor,
                    ms=round(seconds * 1000, 2),
                    **notes,
                )
                return response
            except e.VdnoError as error:
                code = status_for(error)
                actor = caller.actor if caller is not None else "unknown"
                log.warning(
                    "rpc.refused",
                    rpc_id=request_id,
                    method=method,
                    caller=actor,
                    code=code.name,
                    error=type(error).__name__,
                    reason=str(error),
                    **notes,
                )
                if observer is not None:
                    observer.refused(type(error).__name__, code.name)
                if on_refused is not None and isinstance(error, (e.Unauthenticated, e.PermissionDenied)):
                    on_refused(actor, type(error).__name__)
                context.set_trailing_metadata(((e.ERROR_CODE_KEY, error.error_code),))
                context.abort(code, str(error))
            except Exception:
                log.exception(
                    "rpc.internal_error",
                    rpc_id=request_id,
                    method=method,
                    caller=caller.actor if caller is not None else "unknown",
                    **notes,
                )
                if observer is not None:
                    observer.refused("unexpected", grpc.StatusCode.INTERNAL.name)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {request_id})")
            finally:
                _NOTES.reset(notes_token)
                _CALLER.reset(caller_token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=tolerant_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
