"""server.observability: JSON lines, written in whole-line batches of at most PIPE_BUF bytes; everything a
server process writes to stderr is one JSON object per line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from vdno.server.observability import ATOMIC_WRITE, BatchedLineLogger, StdlibLogHandler, configure_logging


class RecordingOut(io.RawIOBase):
    """A binary stream that remembers each write() separately."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        with self._lock:
            self.writes.append(bytes(data))
        return len(data)

    def text(self) -> bytes:
        with self._lock:
            return b"".join(self.writes)


def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextlib.contextmanager
def batched(interval: float) -> Iterator[tuple[RecordingOut, BatchedLineLogger]]:
    out = RecordingOut()
    lines = BatchedLineLogger(out, interval=interval)
    try:
        yield out, lines
    finally:
        lines.close()


def test_info_lines_wait_for_the_writer_thread_then_arrive_in_order() -> None:
    with batched(0.5) as (out, lines):  # the writer thread's first flush is 0.5 s away
        lines.info(b'{"n":1}')
        lines.info(b'{"n":2}')
        assert out.writes == []  # not written by the caller
        wait_for(lambda: out.text() == b'{"n":1}\n{"n":2}\n')


def test_a_warning_is_written_at_once_after_every_earlier_line() -> None:
    with batched(3600) as (out, lines):
        lines.info(b"a")
        lines.warning(b"b")
        assert out.text() == b"a\nb\n"
        lines.error(b"c")
        assert out.text() == b"a\nb\nc\n"


def test_each_write_is_whole_lines_of_at_most_pipe_buf_bytes_and_a_long_line_goes_alone() -> None:
    out = RecordingOut()
    lines = BatchedLineLogger(out, interval=3600)
    sent = [(b"%04d" % i) * 50 for i in range(100)] + [b"L" * (ATOMIC_WRITE + 10)] + [b"tail"]
    for line in sent:
        lines.info(line)
    lines.flush()
    assert len(out.writes) > 1
    for write in out.writes:
        assert write.endswith(b"\n")
        assert len(write) <= ATOMIC_WRITE or write.count(b"\n") == 1
    assert out.text() == b"".join(line + b"\n" for line in sent)
    lines.close()


def test_close_writes_what_is_pending_and_lines_from_many_threads_all_arrive() -> None:
    out = RecordingOut()
    lines = BatchedLineLogger(out, interval=0.01)

    def emit(k: int) -> None:
        for i in range(500):
            lines.info(b"%d-%d" % (k, i))

    threads = [threading.Thread(target=emit, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines.close()
    written = out.text().splitlines()
    assert sorted(written) == sorted(b"%d-%d" % (k, i) for k in range(4) for i in range(500))
    for k in range(4):  # each thread's lines keep their order
        mine = [w for w in written if w.startswith(b"%d-" % k)]
        assert mine == [b"%d-%d" % (k, i) for i in range(500)]


def test_a_closed_output_does_not_raise_into_the_caller() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    out = os.fdopen(write_end, "wb", buffering=0)
    lines = BatchedLineLogger(out, interval=3600)
    lines.error(b"nobody reads this")  # EPIPE is swallowed, not raised
    lines.close()
    out.close()


def test_configure_logging_writes_json_lines_with_level_timestamp_and_bound_context() -> None:
    out = RecordingOut()
    lines = configure_logging("info", out)
    try:
        log = structlog.get_logger("vdno.test")
        structlog.contextvars.bind_contextvars(rpc_id="abc123")
        log.info("rpc.ok", ms=1.5)
        log.debug("not.shown")
        structlog.contextvars.clear_contextvars()
        lines.flush()
        events = [json.loads(line) for line in out.text().splitlines()]
        assert len(events) == 1
        event = events[0]
        assert event["event"] == "rpc.ok" and event["ms"] == 1.5 and event["rpc_id"] == "abc123"
        assert event["level"] == "info" and event["timestamp"].endswith("Z")
    finally:
        lines.close()
        structlog.reset_defaults()


def test_standard_library_records_are_json_lines_with_the_exception_as_a_field() -> None:
    out = RecordingOut()
    lines = configure_logging("info", out)
    try:
        logging.getLogger("grpc._server").info("Exception calling application: %s", "boom")
        try:
            raise ValueError("bad bytes")
        except ValueError:
            logging.getLogger("sqlalchemy.pool").exception("connection failed")
        logging.getLogger("alembic.runtime.migration").debug("not shown below the level")
        lines.flush()
        events = [json.loads(line) for line in out.text().splitlines()]
        assert [(e["logger"], e["level"], e["event"]) for e in events] == [
            ("grpc._server", "info", "Exception calling application: boom"),
            ("sqlalchemy.pool", "error", "connection failed"),
        ]
        assert events[1]["exception"].startswith("Traceback (most recent call last):")
        assert events[1]["exception"].rstrip().endswith("ValueError: bad bytes")
        assert "exception" not in events[0] and events[0]["timestamp"].endswith("Z")
    finally:
        lines.close()
        structlog.reset_defaults()
    assert not [h for h in logging.getLogger().handlers if isinstance(h, StdlibLogHandler)]


def test_a_logged_exception_is_one_line_carrying_the_traceback() -> None:
    out = RecordingOut()
    lines = configure_logging("info", out)
    try:
        try:
            {}["missing"]
        except KeyError:
            structlog.get_logger("vdno.rpc").exception("rpc.internal_error", rpc_id="r-1")
        [line] = out.text().splitlines()  # an error is written at once
        event = json.loads(line)
        assert event["rpc_id"] == "r-1" and event["level"] == "error"
        assert "Traceback (most recent call last):" in event["exception"]
        assert "KeyError: 'missing'" in event["exception"]
    finally:
        lines.close()
        structlog.reset_defaults()


EVERYTHING_ON_STDERR = textwrap.dedent(
    """
    import logging, os, sys, threading, warnings
    import structlog
    from vdno.server.observability import configure_logging
    lines = configure_logging("info")
    logging.getLogger("grpc._cython.cygrpc").warning("a library warning")
    os.write(2, b"E1205 07:09:34.812999   14250 ssl_transport_security.cc:1658] Handshake failed\\n")
    os.write(2, b"a raw line\\n")
    print("printed to sys.stderr", file=sys.stderr)
    warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
    def fail():
        raise RuntimeError("a thread died")
    thread = threading.Thread(target=fail, name="doomed")
    thread.start()
    thread.join()
    structlog.get_logger("vdno").info("done")
    os.write(2, b"a last fragment without an end")
    lines.close()
    """
)


def test_every_line_a_server_process_writes_to_stderr_is_one_json_object() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", EVERYTHING_ON_STDERR],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]  # each line parses
    assert all(isinstance(e, dict) for e in events)
    by_event = {e["event"]: e for e in events}
    assert by_event["a library warning"]["logger"] == "grpc._cython.cygrpc"
    raw = {e["line"]: e["level"] for e in events if e["event"] == "stderr"}
    assert raw == {
        "E1205 07:09:34.812999   14250 ssl_transport_security.cc:1658] Handshake failed": "error",
        "a raw line": "warning",
        "printed to sys.stderr": "warning",
        "a last fragment without an end": "warning",
    }
    [warned] = [e for e in events if e.get("logger") == "py.warnings"]
    assert "DeprecationWarning: a deprecation" in warned["event"]
    died = by_event["thread.uncaught_exception"]
    assert died["thread"] == "doomed" and "RuntimeError: a thread died" in died["exception"]
    assert "done" in by_event
