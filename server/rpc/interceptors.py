"""The one interceptor: binds a request id and the bench identity to the log context, and maps domain
errors to gRPC status codes with their safe message. Anything else becomes INTERNAL with a generic
message; its details stay in the server log."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import grpc
import structlog

from server.domain import errors as e

STATUS_BY_ERROR: tuple[tuple[type[e.VdnoError], grpc.StatusCode], ...] = (
    (e.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.BenchNotEnrolled, grpc.StatusCode.PERMISSION_DENIED),
    (e.UnknownArea, grpc.StatusCode.NOT_FOUND),
    (e.UnknownIssuance, grpc.StatusCode.NOT_FOUND),
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


def _peer_common_name(context: grpc.ServicerContext) -> str | None:
    names = context.auth_context().get("x509_common_name") or []
    return bytes(names[0]).decode("utf-8", "replace") if names else None


# The calling bench's CN, read once per call by the interceptor (auth_context() copies every TLS property).
_CALLER: ContextVar[str | None] = ContextVar("vdno_caller", default=None)


def bench_identity() -> str:
    """The calling bench's id: the CN of its verified client certificate (mTLS is enforced by the TLS layer),
    as ErrorMappingInterceptor read it for this call."""
    name = _CALLER.get()
    if name is None:
        raise e.Unauthenticated("a client certificate naming the bench is required")
    return name


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, on_refused_auth: Callable[[str, str], None] | None = None) -> None:
        self._log = structlog.get_logger("vdno.rpc")
        self._on_refused_auth = on_refused_auth
        self._wrapped: dict[str, Any] = {}  # method -> wrapped handler (handlers are fixed at start-up)
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

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = f"{prefix}{next(ids):010x}"
            caller = _peer_common_name(context)
            bench = caller or "?"
            caller_token = _CALLER.set(caller)
            call_log = log.bind(rpc_id=request_id, method=method, bench=bench)
            started = time.perf_counter()
            try:
                response = inner(request, context)
                call_log.info("rpc.ok", ms=round((time.perf_counter() - started) * 1000, 2))
                return response
            except e.VdnoError as error:
                code = status_for(error)
                call_log.warning("rpc.refused", code=code.name, error=type(error).__name__, reason=str(error))
                if on_refused is not None and isinstance(error, (e.Unauthenticated, e.BenchNotEnrolled)):
                    on_refused(bench, type(error).__name__)
                context.abort(code, str(error))
            except Exception:
                call_log.exception("rpc.internal_error")
                context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {request_id})")
            finally:
                _CALLER.reset(caller_token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
