"""The tray's frame protocol over TCP (loopback), between a bench's device transport (client/transport.py)
and whatever holds the meters (the simulator, vdno-sim serve; a lab rig). Neither side owns it.

Each frame: 4-byte big-endian unsigned length N (1 <= N <= 1 MiB), then N body bytes.

Request bodies (op byte, then data):
  OP_SEND  0x01  8-byte device id ‖ GBCS message bytes  -> RESP_GBCS 0x81 ‖ the device's response bytes
  OP_LIST  0x02  (no data)                              -> RESP_LIST 0x82 ‖ UTF-8 JSON array of device ids
                                                           (16 lower-case hex digits)
Errors: RESP_ERROR 0xEE ‖ UTF-8 JSON {"status": int | null, "reason": str} (unknown device, device refused,
malformed frame, unknown op, frame too large). A length of 0 or above 1 MiB gets an error frame and the
connection is closed. Many request/response pairs may share a connection.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

OP_SEND = 0x01
OP_LIST = 0x02
RESP_GBCS = 0x81
RESP_LIST = 0x82
RESP_ERROR = 0xEE

MAX_FRAME = 1 << 20
LENGTH_PREFIX = 4
DEVICE_ID_LEN = 8


class FrameError(Exception):
    """A frame could not be read. kind: "eof" (peer closed cleanly between frames), "truncated", "empty"
    (length 0), "too_large", "timeout", "io"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def encode_frame(body: bytes) -> bytes:
    """Length prefix ‖ body. ValueError for an empty or oversize body."""
    if not 1 <= len(body) <= MAX_FRAME:
        raise ValueError(f"frame body must be 1..{MAX_FRAME} bytes, got {len(body)}")
    return struct.pack(">I", len(body)) + bytes(body)


def _recv_exact(sock: socket.socket, n: int, what: str, at_boundary: bool) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        try:
            chunk = sock.recv(min(n - got, 65536))
        except TimeoutError as exc:
            raise FrameError("timeout", f"timed out reading {what}") from exc
        except OSError as exc:
            raise FrameError("io", f"socket error reading {what}: {exc}") from exc
        if not chunk:
            if got == 0 and at_boundary:
                raise FrameError("eof", "connection closed")
            raise FrameError("truncated", f"connection closed in the middle of {what} ({got}/{n} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> bytes:
    """Read one frame body. FrameError on EOF, truncation, length 0 or > 1 MiB, timeout."""
    prefix = _recv_exact(sock, LENGTH_PREFIX, "the length prefix", at_boundary=True)
    (length,) = struct.unpack(">I", prefix)
    if length == 0:
        raise FrameError("empty", "frame length 0")
    if length > MAX_FRAME:
        raise FrameError("too_large", f"frame length {length} exceeds {MAX_FRAME}")
    return _recv_exact(sock, length, "the frame body", at_boundary=False)


# --- bodies ---------------------------------------------------------------------------------------


def send_body(device_id: bytes, message: bytes) -> bytes:
    if len(device_id) != DEVICE_ID_LEN:
        raise ValueError(f"device id must be {DEVICE_ID_LEN} bytes")
    return bytes([OP_SEND]) + bytes(device_id) + bytes(message)


def list_body() -> bytes:
    return bytes([OP_LIST])


def error_body(status: int | None, reason: str) -> bytes:
    return bytes([RESP_ERROR]) + json.dumps({"status": status, "reason": reason}).encode("utf-8")


@dataclass(frozen=True)
class Reply:
    """A decoded reply body: kind is RESP_GBCS / RESP_LIST / RESP_ERROR."""

    kind: int
    data: bytes = b""
    device_ids: tuple[str, ...] = ()
    status: int | None = None
    reason: str = ""


def decode_reply(body: bytes) -> Reply:
    """Parse a reply body. ValueError when it is none of the three reply kinds or its JSON is malformed."""
    if not body:
        raise ValueError("empty reply body")
    kind, data = body[0], bytes(body[1:])
    if kind == RESP_GBCS:
        return Reply(kind, data=data)
    if kind == RESP_LIST:
        ids = json.loads(data.decode("utf-8"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("RESP_LIST body is not a JSON array of strings")
        return Reply(kind, device_ids=tuple(ids))
    if kind == RESP_ERROR:
        err = json.loads(data.decode("utf-8"))
        if not isinstance(err, dict):
            raise ValueError("RESP_ERROR body is not a JSON object")
        status = err.get("status")
        return Reply(
            kind, status=status if isinstance(status, int) else None, reason=str(err.get("reason", ""))
        )
    raise ValueError(f"unknown reply kind {kind:#04x}")


class FrameClient:
    """A minimal blocking client for the tray (tests and tools; the bench has its own transport)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def request(self, body: bytes) -> Reply:
        self.sock.sendall(encode_frame(body))
        return decode_reply(read_frame(self.sock))

    def send(self, device_id: bytes, message: bytes) -> Reply:
        return self.request(send_body(device_id, message))

    def list(self) -> tuple[str, ...]:
        reply = self.request(list_body())
        if reply.kind != RESP_LIST:
            raise ValueError(f"LIST answered with an error: {reply.reason}")
        return reply.device_ids

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> FrameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
