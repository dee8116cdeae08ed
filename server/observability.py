"""structlog JSON logging. Log lines carry a request id; they never carry PINs or key material.

Lines are rendered with orjson and written in batches (BatchedLineLogger): a line written by a request
thread costs a list append, not a system call, so the request threads hand the interpreter lock back to
the issuance pipeline sooner (docs/benchmarks.md)."""

from __future__ import annotations

import collections
import logging
import select
import sys
import threading
from typing import BinaryIO

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


def configure_logging(level: str = "info", out: BinaryIO | None = None) -> BatchedLineLogger:
    """Configure structlog for this process (JSON lines to `out`, stderr by default); the caller closes
    the returned logger before the process exits."""
    logging.basicConfig(
        format="%(message)s", stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO)
    )
    lines = BatchedLineLogger(out if out is not None else sys.stderr.buffer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=lambda *_args: lines,
        cache_logger_on_first_use=True,
    )
    return lines
