"""Device transports: how the bench talks to a meter (or the simulator).

The simulator frame protocol (the same as simulator/frames.py): each frame is a 4-byte big-endian length
then the body. Requests: OP_SEND (0x01) ‖ 8-byte device id ‖ GBCS bytes -> reply 0x81 ‖ response bytes;
OP_LIST (0x02) -> reply 0x82 ‖ JSON array of 16-hex ids. Any request may be answered with
RESP_ERROR (0xEE) ‖ JSON {"status": int | null, "reason": str}.
The framing is implemented here too so the client does not depend on the simulator package.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Protocol

from client.errors import DeviceRefusedError, TransportError
from gbcs.errors import DecodeError
from gbcs.ids import check_eui64, parse_eui64

OP_SEND = 0x01
OP_LIST = 0x02
RESP_SEND = 0x81
RESP_LIST = 0x82
RESP_ERROR = 0xEE
MAX_FRAME = 16 * 1024 * 1024


class DeviceTransport(Protocol):
    def send(self, device_id: bytes, message: bytes) -> bytes:
        """Deliver GBCS bytes to the device; return its GBCS response bytes."""
        ...

    def list_devices(self) -> list[bytes]:
        """8-byte ids of the devices reachable through this transport."""
        ...


def encode_frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise TransportError(f"frame body of {len(body)} bytes exceeds {MAX_FRAME}")
    return len(body).to_bytes(4, "big") + bytes(body)


class _ConnectionClosed(TransportError):
    """The peer closed the connection before sending any byte of the reply."""


def _recv_exact(sock: socket.socket, n: int, started: bool) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            if not chunks and not started:
                raise _ConnectionClosed("connection closed by the device transport")
            raise TransportError(f"connection closed mid-frame ({len(chunks)} of {n} bytes)")
        chunks.extend(chunk)
    return bytes(chunks)


def read_frame(sock: socket.socket) -> bytes:
    """One frame body. TransportError on EOF, oversize or truncation."""
    length = int.from_bytes(_recv_exact(sock, 4, started=False), "big")
    if length > MAX_FRAME:
        raise TransportError(f"frame length {length} exceeds {MAX_FRAME}")
    return _recv_exact(sock, length, started=True) if length else b""


def parse_error_body(payload: bytes) -> DeviceRefusedError:
    try:
        doc = json.loads(payload.decode("utf-8"))
        status = doc.get("status")
        reason = str(doc.get("reason", ""))
        if status is not None and not isinstance(status, int):
            status = None
    except (UnicodeDecodeError, ValueError, AttributeError):
        return DeviceRefusedError(None, f"unparseable error frame {payload[:64].hex()}")
    return DeviceRefusedError(status, reason)


class SimulatorTransport:
    """The frame protocol over one TCP connection, opened lazily and re-opened after a failure.

    A request on a connection that was already used and turns out to be closed by the peer (no reply byte
    read) is retried once on a fresh connection; every other failure raises TransportError.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------------------

    def send(self, device_id: bytes, message: bytes) -> bytes:
        try:
            device = check_eui64(bytes(device_id), "device id")
        except DecodeError as exc:
            raise TransportError(str(exc)) from exc
        return self._request(bytes([OP_SEND]) + device + bytes(message), RESP_SEND)

    def list_devices(self) -> list[bytes]:
        payload = self._request(bytes([OP_LIST]), RESP_LIST)
        try:
            items = json.loads(payload.decode("utf-8"))
            if not isinstance(items, list):
                raise ValueError("not a JSON array")
            return [parse_eui64(str(item)) for item in items]
        except (UnicodeDecodeError, ValueError, DecodeError) as exc:
            raise TransportError(f"bad device list reply: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> SimulatorTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        sock.settimeout(self.timeout)
        return sock

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _request(self, body: bytes, expected: int) -> bytes:
        frame = encode_frame(body)
        with self._lock:
            for attempt in (1, 2):
                reused = self._sock is not None
                if self._sock is None:
                    self._sock = self._connect()
                sock = self._sock
                try:
                    sock.sendall(frame)
                    reply = read_frame(sock)
                except _ConnectionClosed as exc:
                    self._drop()
                    if reused and attempt == 1:
                        continue
                    raise TransportError(f"{self.host}:{self.port}: {exc}") from exc
                except (BrokenPipeError, ConnectionResetError) as exc:
                    self._drop()
                    if reused and attempt == 1:
                        continue
                    raise TransportError(f"{self.host}:{self.port}: connection lost: {exc}") from exc
                except TransportError:
                    self._drop()
                    raise
                except OSError as exc:  # includes socket.timeout
                    self._drop()
                    raise TransportError(f"{self.host}:{self.port}: {exc or type(exc).__name__}") from exc
                return self._check_reply(reply, expected)
        raise TransportError(f"{self.host}:{self.port}: no reply")  # pragma: no cover

    def _check_reply(self, reply: bytes, expected: int) -> bytes:
        if not reply:
            raise TransportError("empty reply frame")
        op, payload = reply[0], reply[1:]
        if op == RESP_ERROR:
            raise parse_error_body(payload)
        if op != expected:
            raise TransportError(f"unexpected reply op {op:#04x} (expected {expected:#04x})")
        return payload
