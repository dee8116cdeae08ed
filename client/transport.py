"""Device transports: how the bench talks to a meter (or the simulator).

SimulatorTransport speaks the tray's frame protocol, which lives in vdno/device_frames.py, shared with the
simulator (framing, op and reply codes, reply-body parsing; it imports neither grpc nor pkcs11). In short:
each frame is a 4-byte big-endian length then the body. Requests: OP_SEND (0x01) ‖ 8-byte device id ‖ GBCS
bytes -> reply 0x81 ‖ response bytes; OP_LIST (0x02) -> reply 0x82 ‖ JSON array of 16-hex ids. Any request
may be answered with RESP_ERROR (0xEE) ‖ JSON {"status": int | null, "reason": str}.
"""

from __future__ import annotations

import socket
import threading
from typing import Protocol

from vdno.client.errors import DeviceRefusedError, TransportError
from vdno.device_frames import (
    RESP_ERROR,
    RESP_GBCS,
    RESP_LIST,
    FrameError,
    Reply,
    decode_reply,
    encode_frame,
    list_body,
    read_frame,
    send_body,
)
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import check_eui64, parse_eui64

__all__ = [
    "RESP_ERROR",
    "RESP_LIST",
    "DeviceTransport",
    "SimulatorTransport",
    "encode_frame",
    "parse_error_body",
    "read_frame",
]


class DeviceTransport(Protocol):
    def send(self, device_id: bytes, message: bytes) -> bytes:
        """Deliver GBCS bytes to the device; return its GBCS response bytes."""
        ...

    def list_devices(self) -> list[bytes]:
        """8-byte ids of the devices reachable through this transport."""
        ...


def parse_error_body(payload: bytes) -> DeviceRefusedError:
    """The DeviceRefusedError for the data of a RESP_ERROR reply (the bytes after the 0xEE op)."""
    try:
        reply = decode_reply(bytes([RESP_ERROR]) + bytes(payload))
    except ValueError:
        return DeviceRefusedError(None, f"unparseable error frame {payload[:64].hex()}")
    return DeviceRefusedError(reply.status, reply.reason)


def _peer_went_away(exc: FrameError) -> bool:
    """The peer closed or reset the connection before any byte of the reply arrived."""
    return exc.kind == "eof" or (exc.kind == "io" and isinstance(exc.__cause__, ConnectionResetError))


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
        return self._request(send_body(device, bytes(message)), RESP_GBCS).data

    def list_devices(self) -> list[bytes]:
        reply = self._request(list_body(), RESP_LIST)
        try:
            return [parse_eui64(item) for item in reply.device_ids]
        except DecodeError as exc:
            raise TransportError(f"bad device list reply: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> SimulatorTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {self._where}: {exc}") from exc
        sock.settimeout(self.timeout)
        return sock

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _request(self, body: bytes, expected: int) -> Reply:
        try:
            frame = encode_frame(body)
        except ValueError as exc:
            raise TransportError(str(exc)) from exc
        with self._lock:
            for attempt in (1, 2):
                reused = self._sock is not None
                if self._sock is None:
                    self._sock = self._connect()
                sock = self._sock
                try:
                    sock.sendall(frame)
                    reply = read_frame(sock)
                except FrameError as exc:
                    self._drop()
                    if _peer_went_away(exc) and reused and attempt == 1:
                        continue
                    if exc.kind == "truncated":
                        raise TransportError(f"{self._where}: reply cut off mid-frame: {exc}") from exc
                    raise TransportError(f"{self._where}: {exc}") from exc
                except (BrokenPipeError, ConnectionResetError) as exc:
                    self._drop()
                    if reused and attempt == 1:
                        continue
                    raise TransportError(f"{self._where}: connection lost: {exc}") from exc
                except OSError as exc:  # includes socket.timeout while sending
                    self._drop()
                    raise TransportError(f"{self._where}: {exc or type(exc).__name__}") from exc
                return self._check_reply(reply, expected)
        raise TransportError(f"{self._where}: no reply")  # pragma: no cover

    def _check_reply(self, reply: bytes, expected: int) -> Reply:
        if not reply:
            raise TransportError("empty reply frame")
        op = reply[0]
        if op == RESP_ERROR:
            raise parse_error_body(reply[1:])
        if op != expected:
            raise TransportError(f"unexpected reply op {op:#04x} (expected {expected:#04x})")
        try:
            return decode_reply(reply)
        except ValueError as exc:
            what = "device list" if op == RESP_LIST else f"{op:#04x}"
            raise TransportError(f"bad {what} reply: {exc}") from exc
