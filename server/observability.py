"""structlog JSON logging. Log lines carry a request id; they never carry PINs or key material.

Lines are rendered with orjson and written in batches (BatchedLineLogger): a line written by a request
thread costs a list append, not a system call, so the request threads hand the interpreter lock back to
the issuance pipeline sooner (docs/benchmarks.md).

Every line a server process writes to stderr is one JSON object: the standard library's logging (grpc,
alembic, sqlalchemy, warnings) is rendered by the same processors as structlog's; an exception is the
"exception" field (formatted text), never raw traceback lines; and what is written to file descriptor 2
behind Python's back (gRPC core's own log, an interpreter's last-resort message) is read back from a pipe
and wrapped, one JSON object per line."""

from __future__ import annotations

import collections
import logging
import os
import re
import select
import sys
import threading
from types import TracebackType
from typing import Any, BinaryIO

import orjson
import structlog

FLUSH_INTERVAL = 0.1  # seconds an info line may wait before it is written
# A write of at most PIPE_BUF bytes to a pipe is atomic (POSIX): processes sharing stderr never
# interleave inside a line.
ATOMIC_WRITE = select.PIPE_BUF


class BatchedLineLogger:
    """The structlog logger of one process: debug and info lines are written every FLUSH_INTERVAL
    seconds by a daemon thread; a warning or an error is written at once, with every line before it.
    Each write holds whole lines and at most ATOMIC_WRITE bytes (a longer line is written alone).
    Call close() before the process exits: a hard crash loses at most FLUSH_INTERVAL seconds of info
    lines (security events are in the audit log, in the database, not here)."""

    def __init__(self, out: BinaryIO, interval: float = FLUSH_INTERVAL) -> None:
        self._out = out
        self._pending: collections.deque[bytes] = collections.deque()  # append/popleft: thread-safe
        self._write_lock = threading.Lock()  # one writer at a time keeps the lines in order
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def msg(self, message: bytes) -> None:
        self._pending.append(message + b"\n")

    debug = info = log = msg

    def msg_now(self, message: bytes) -> None:
        self._pending.append(message + b"\n")
        self.flush()

    warning = warn = error = err = critical = fatal = exception = failure = msg_now

    def flush(self) -> None:
        """Write every pending line now."""
        with self._write_lock:
            chunk: list[bytes] = []
            size = 0
            while True:
                try:
                    line = self._pending.popleft()
                except IndexError:
                    break
                if chunk and size + len(line) > ATOMIC_WRITE:
                    self._write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._write(b"".join(chunk))

    def close(self) -> None:
        """Stop the writer thread and write what is pending."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _write(self, data: bytes) -> None:
        try:
            self._out.write(data)
            self._out.flush()
        except (OSError, ValueError):  # stderr closed or gone: there is nowhere left to report it
            pass

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()


def _dumps_text(value: Any, **_kw: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _logger_name(_logger: Any, _method: str, event_dict: Any) -> Any:
    """A standard-library record's logger name (e.g. grpc._server), as "logger"."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("logger", record.name)
    return event_dict


def _annotations() -> list[Any]:
    """What every line carries: bound context, level and time."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


class StdlibLogHandler(logging.Handler):
    """Writes standard-library log records as JSON lines, rendered like structlog's, into `lines`."""

    def __init__(self, lines: BatchedLineLogger, level: int) -> None:
        super().__init__(level)
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[_logger_name, *_annotations()],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=_dumps_text),
                ],
            )
        )
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode()
        except Exception:  # a record that cannot be rendered must not break the caller
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self._lines.msg_now(line)
        else:
            self._lines.msg(line)


# gRPC core (abseil) prefixes its lines with a severity letter and the date: "W1205 07:09:34.812 ..."
_ABSEIL_SEVERITY = re.compile(rb"^([IWEF])\d{4} ")
_SEVERITY = {b"I": "info", b"W": "warning", b"E": "error", b"F": "critical"}


class StderrCapture:
    """File descriptor `fd` (stderr) replaced by a pipe whose lines a thread turns into JSON objects in
    `lines`: a line that is one already (a worker process's log line) passes unchanged; any other becomes
    {"event": "stderr", "line": ...} at the severity gRPC core gave it (warning when it gave none).
    stop() puts the original descriptor back and writes what is left in the pipe."""

    def __init__(self, fd: int, lines: BatchedLineLogger) -> None:
        self._fd = fd
        self._lines = lines
        self._saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._read_end = read_end
        self._log = structlog.get_logger("vdno.stderr")
        self._thread = threading.Thread(target=self._run, name="stderr-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, self._fd)  # the pipe's last write end closes: the reader sees its end
        os.close(self._saved)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                self._line(line)
        if pending:
            self._line(pending)
        os.close(self._read_end)

    def _line(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r")
        if not line.strip():
            return
        if line.startswith(b"{") and line.endswith(b"}"):
            self._lines.msg(line)
            return
        found = _ABSEIL_SEVERITY.match(line)
        level = _SEVERITY[found.group(1)] if found else "warning"
        self._log.log(getattr(logging, level.upper()), "stderr", line=line.decode("utf-8", "replace"))


class ProcessLog(BatchedLineLogger):
    """The logger of a process configured by configure_logging; close() also undoes the routing."""

    handler: StdlibLogHandler | None = None
    capture: StderrCapture | None = None
    hooks: tuple[Any, Any] | None = None  # sys.excepthook, threading.excepthook replaced
    owned: BinaryIO | None = None  # the output configure_logging opened (a copy of stderr)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture = None
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            logging.captureWarnings(False)
            self.handler = None
        if self.hooks is not None:
            sys.excepthook, threading.excepthook = self.hooks
            self.hooks = None
        super().close()
        if self.owned is not None:
            self.owned.close()
            self.owned = None


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    structlog.get_logger("vdno").critical("uncaught_exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("vdno").error(
        "thread.uncaught_exception",
        thread=None if args.thread is None else args.thread.name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(level: str = "info", out: BinaryIO | None = None) -> ProcessLog:
    """Configure structlog and the standard library's logging for this process: JSON lines to `out`.
    Without `out` they go to stderr, and everything else written to stderr (file descriptor 2), uncaught
    exceptions included, is made JSON lines too. The caller closes the returned logger before the process
    exits."""
    threshold = getattr(logging, level.upper(), logging.INFO)
    capture = out is None
    if out is None:
        sys.stderr.flush()
        out = os.fdopen(os.dup(2), "wb")  # the real stderr, once descriptor 2 is the capture's pipe
    lines = ProcessLog(out)
    structlog.configure(
        processors=[
            *_annotations(),
            structlog.processors.format_exc_info,  # exc_info -> "exception": the formatted traceback
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_args: lines,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StdlibLogHandler)]:
        root.removeHandler(old)
    lines.handler = StdlibLogHandler(lines, threshold)
    root.addHandler(lines.handler)
    root.setLevel(threshold)
    logging.captureWarnings(True)
    if capture:
        lines.owned = out
        lines.capture = StderrCapture(2, lines)
        lines.hooks = (sys.excepthook, threading.excepthook)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    return lines
