"""SimulatorTransport against a tiny in-test server speaking the frame protocol."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from vdno.client.errors import DeviceRefusedError, TransportError
from vdno.client.transport import SimulatorTransport, encode_frame

DEV = bytes.fromhex("00db1234567890a0")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


TRUNCATED = b"\x00\x00\x00\x10\x81"  # a length prefix promising 16 bytes, 1 byte sent, then close
Handler = Callable[[bytes], bytes | None]  # request body -> reply body; None = close the connection


class FramedServer:
    def __init__(self, handler: Handler, close_after_each: bool = False) -> None:
        self.handler = handler
        self.close_after_each = close_after_each
        self.connections = 0
        self.requests: list[bytes] = []
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                sock: socket.socket = self.request
                while True:
                    head = _recv_exact(sock, 4)
                    if head is None:
                        return
                    body = _recv_exact(sock, int.from_bytes(head, "big"))
                    if body is None:
                        return
                    outer.requests.append(body)
                    reply = outer.handler(body)
                    if reply is None:
                        return
                    sock.sendall(reply)
                    if outer.close_after_each or reply == TRUNCATED:
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def simulator_handler(body: bytes) -> bytes | None:
    op = body[0]
    if op == 0x02:
        return _frame(b"\x82" + json.dumps([DEV.hex(), "00db1234567890a1"]).encode())
    if op == 0x01:
        device, message = body[1:9], body[9:]
        if device != DEV:
            return _frame(b"\xee" + json.dumps({"status": None, "reason": "no such device"}).encode())
        if message == b"refuse":
            return _frame(b"\xee" + json.dumps({"status": 8, "reason": "bad sequence number"}).encode())
        if message == b"wrong-op":
            return _frame(b"\x82[]")
        if message == b"hang":
            return TRUNCATED
        return _frame(b"\x81" + message[::-1])
    return None


@pytest.fixture
def server() -> Iterator[FramedServer]:
    srv = FramedServer(simulator_handler)
    yield srv
    srv.stop()


def test_send_and_list_over_one_connection(server: FramedServer) -> None:
    with SimulatorTransport("127.0.0.1", server.port, timeout=5) as transport:
        assert transport.list_devices() == [DEV, bytes.fromhex("00db1234567890a1")]
        assert transport.send(DEV, b"\xdf\x01\x02") == b"\x02\x01\xdf"
        assert transport.send(DEV, b"abc") == b"cba"
    assert server.connections == 1
    assert server.requests[1] == b"\x01" + DEV + b"\xdf\x01\x02"


def test_error_frame_raises_device_refused(server: FramedServer) -> None:
    with SimulatorTransport("127.0.0.1", server.port, timeout=5) as transport:
        with pytest.raises(DeviceRefusedError) as info:
            transport.send(DEV, b"refuse")
        assert info.value.status == 8 and info.value.reason == "bad sequence number"
        with pytest.raises(DeviceRefusedError) as info:
            transport.send(bytes(8), b"x")
        assert info.value.status is None
        assert transport.send(DEV, b"ok") == b"ko"  # the connection is still usable
    assert server.connections == 1


def test_unexpected_reply_op(server: FramedServer) -> None:
    with SimulatorTransport("127.0.0.1", server.port, timeout=5) as transport, pytest.raises(TransportError):
        transport.send(DEV, b"wrong-op")


def test_truncated_reply_then_reconnect(server: FramedServer) -> None:
    with SimulatorTransport("127.0.0.1", server.port, timeout=5) as transport:
        with pytest.raises(TransportError, match="mid-frame"):
            transport.send(DEV, b"hang")
        assert transport.send(DEV, b"again") == b"niaga"
    assert server.connections == 2


def test_reconnects_when_peer_closed_idle_connection() -> None:
    srv = FramedServer(simulator_handler, close_after_each=True)
    try:
        with SimulatorTransport("127.0.0.1", srv.port, timeout=5) as transport:
            for i in range(3):
                assert transport.send(DEV, bytes([i])) == bytes([i])
        assert srv.connections == 3
    finally:
        srv.stop()


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = SimulatorTransport("127.0.0.1", port, timeout=2)
    with pytest.raises(TransportError, match="cannot connect"):
        transport.list_devices()


def test_timeout_raises_transport_error() -> None:
    srv = FramedServer(lambda body: b"")  # never answers but keeps the connection
    try:
        transport = SimulatorTransport("127.0.0.1", srv.port, timeout=0.3)
        with pytest.raises(TransportError):
            transport.send(DEV, b"x")
        transport.close()
    finally:
        srv.stop()


def test_bad_device_id_length() -> None:
    with pytest.raises(TransportError):
        SimulatorTransport("127.0.0.1", 1).send(b"\x01", b"x")


def test_frame_wire_format() -> None:
    """4-byte big-endian length, then the body (the in-test server above frames by hand)."""
    assert encode_frame(b"\x02") == b"\x00\x00\x00\x01\x02"
    assert encode_frame(bytes(300))[:4] == b"\x00\x00\x01\x2c"


def test_parse_error_body() -> None:
    from vdno.client.transport import parse_error_body

    refused = parse_error_body(json.dumps({"status": 8, "reason": "bad sequence number"}).encode())
    assert (refused.status, refused.reason) == (8, "bad sequence number")
    assert parse_error_body(json.dumps({"status": "x", "reason": "r"}).encode()).status is None
    for junk in (b"\xff\xfe", b"not json", b"[1, 2]"):
        garbled = parse_error_body(junk)
        assert garbled.status is None and "unparseable error frame" in garbled.reason


def test_oversize_message_is_a_transport_error(server: FramedServer) -> None:
    from vdno.device_frames import MAX_FRAME

    with SimulatorTransport("127.0.0.1", server.port, timeout=5) as transport:
        with pytest.raises(TransportError, match="frame body"):
            transport.send(DEV, bytes(MAX_FRAME))
        assert transport.send(DEV, b"ok") == b"ko"
