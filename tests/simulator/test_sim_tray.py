"""The tray: in-process handling, the loopback TCP server and its frame protocol, and `vdno-sim serve`."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sim_testlib import LAB_DEVICE, NO_A, RTDS_DEVICE, World, cs02a, lab_device, rtds_profile

from vdno.device_frames import (
    MAX_FRAME,
    OP_LIST,
    OP_SEND,
    RESP_ERROR,
    RESP_GBCS,
    RESP_LIST,
    FrameClient,
    FrameError,
    decode_reply,
    encode_frame,
    list_body,
    read_frame,
    send_body,
)
from vdno.gbcs.cells import NO_DS_CELL
from vdno.gbcs.cs02b import UpdateSecurityCredentialsResponse
from vdno.gbcs.framing import decode_message
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.lab import write_tray
from vdno.simulator.profile import save_profile
from vdno.simulator.tray import Tray, TrayServer


@pytest.fixture
def tray(vectors_dir: Path, world: World) -> Tray:
    return Tray([SimulatedDevice(rtds_profile(vectors_dir)), lab_device(world, allow_local_reads=True)])


@pytest.fixture
def server(tray: Tray) -> Iterator[TrayServer]:
    srv = TrayServer(tray, idle_timeout=5.0)
    srv.start()
    yield srv
    srv.stop()


def _connect(server: TrayServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _error(reply_body: bytes) -> dict[str, object]:
    assert reply_body[0] == RESP_ERROR
    value = json.loads(reply_body[1:].decode())
    assert isinstance(value, dict) and set(value) == {"status", "reason"}
    return value


def test_tray_handle_in_process(tray: Tray, nobyno_command: bytes, nobyno_response: bytes) -> None:
    body = tray.handle(list_body())
    assert body[0] == RESP_LIST
    assert json.loads(body[1:]) == sorted([RTDS_DEVICE.hex(), LAB_DEVICE.hex()])
    reply = decode_reply(tray.handle(send_body(RTDS_DEVICE, nobyno_command)))
    assert reply.kind == RESP_GBCS
    assert decode_message(reply.data).apdu.content == decode_message(nobyno_response).apdu.content

    assert "unknown device" in str(_error(tray.handle(send_body(bytes(8), nobyno_command)))["reason"])
    refused = _error(tray.handle(send_body(RTDS_DEVICE, b"\x01\x02")))
    assert refused["status"] == 1 and "refused" in str(refused["reason"])
    other = _error(tray.handle(send_body(LAB_DEVICE, nobyno_command)))  # addressed to the RTDS device
    assert other["status"] is None and "addressed to" in str(other["reason"])
    assert "unknown op" in str(_error(tray.handle(b"\x07abc"))["reason"])
    assert "malformed" in str(_error(tray.handle(bytes([OP_SEND]) + b"short"))["reason"])
    assert "malformed" in str(_error(tray.handle(bytes([OP_LIST, 0])))["reason"])
    assert "malformed" in str(_error(tray.handle(b""))["reason"])


def test_server_send_and_list(server: TrayServer, nobyno_command: bytes, nobyno_response: bytes) -> None:
    with FrameClient("127.0.0.1", server.port, timeout=5) as client:
        assert client.list() == tuple(sorted([RTDS_DEVICE.hex(), LAB_DEVICE.hex()]))
        reply = client.send(RTDS_DEVICE, nobyno_command)
        assert reply.kind == RESP_GBCS
        payload = UpdateSecurityCredentialsResponse.decode(decode_message(reply.data).apdu.content)
        assert payload.execution_outcome is not None
        assert decode_message(reply.data).apdu.content == decode_message(nobyno_response).apdu.content
        # same connection, the replay: a signed response with status 8
        reply = client.send(RTDS_DEVICE, nobyno_command)
        payload = UpdateSecurityCredentialsResponse.decode(decode_message(reply.data).apdu.content)
        assert payload.execution_outcome is not None
        assert {o.status for o in payload.execution_outcome.replacement_outcomes} == {8}
        read = cs02a(NO_A, LAB_DEVICE, 1, (3,), NO_DS_CELL).encode()
        assert client.send(LAB_DEVICE, read).kind == RESP_GBCS
        error = client.send(bytes.fromhex("0011223344556677"), read)
        assert error.kind == RESP_ERROR and error.status is None and "unknown device" in error.reason


def _still_serving(server: TrayServer) -> None:
    with FrameClient("127.0.0.1", server.port, timeout=5) as client:
        assert len(client.list()) == 2


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0xFFFFFFFF])
def test_bad_length_gets_error_then_close(server: TrayServer, length: int) -> None:
    with _connect(server) as sock:
        sock.sendall(struct.pack(">I", length))
        body = read_frame(sock)
        assert "malformed frame" in str(_error(body)["reason"])
        assert _closed(sock)
    _still_serving(server)


def test_unknown_op_and_garbage_keep_the_connection(server: TrayServer) -> None:
    with _connect(server) as sock:
        for body in (b"\x99", b"\x99" * 100, bytes([OP_SEND]) + b"\x00" * 3, os.urandom(64) + b"\x00"):
            sock.sendall(encode_frame(body))
            _error(read_frame(sock))
        sock.sendall(encode_frame(bytes([OP_SEND]) + RTDS_DEVICE + os.urandom(300)))
        assert _error(read_frame(sock))["status"] == 1
        sock.sendall(encode_frame(list_body()))
        assert read_frame(sock)[0] == RESP_LIST


@pytest.mark.parametrize(
    "partial", [b"\x00", b"\x00\x00\x01", struct.pack(">I", 100) + b"\x02" * 10, b"\xff\xff"]
)
def test_truncated_then_close(server: TrayServer, partial: bytes) -> None:
    with _connect(server) as sock:
        sock.sendall(partial)
        sock.shutdown(socket.SHUT_WR)
        assert _closed(sock)
    _still_serving(server)


def test_idle_connection_times_out(tray: Tray) -> None:
    with TrayServer(tray, idle_timeout=0.3) as srv, _connect(srv) as sock:
        sock.sendall(b"\x00\x00")  # a stalled peer
        sock.settimeout(5)
        assert _closed(sock)
        _still_serving(srv)


def test_concurrent_clients(server: TrayServer) -> None:
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            with FrameClient("127.0.0.1", server.port, timeout=5) as client:
                for i in range(10):
                    read = cs02a(NO_A, LAB_DEVICE, start + i, (3,), NO_DS_CELL).encode()
                    assert client.send(LAB_DEVICE, read).kind == RESP_GBCS
                    assert len(client.list()) == 2
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 100,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_read_frame_errors() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(encode_frame(b"hello"))
        assert read_frame(a) == b"hello"
        b.sendall(struct.pack(">I", MAX_FRAME + 1))
        with pytest.raises(FrameError) as info:
            read_frame(a)
        assert info.value.kind == "too_large"
        b.sendall(b"\x00\x00\x00\x05ab")
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(FrameError) as info:
            read_frame(a)
        assert info.value.kind == "truncated"
        with pytest.raises(FrameError) as info:
            read_frame(a)
        assert info.value.kind == "eof"
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(b"x" * (MAX_FRAME + 1))


def test_server_is_loopback_only(tray: Tray) -> None:
    with pytest.raises(ValueError, match="loopback"):
        TrayServer(tray, host="0.0.0.0")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "vdno-sim"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vdno.simulator"]


def test_cli_serve_prints_port_and_answers_list(world: World, vectors_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tray"
    write_tray([lab_device(world).to_profile()], folder)
    save_profile(rtds_profile(vectors_dir), folder / "rtds.json")
    proc = subprocess.Popen(
        [*_cli(), "serve", "--profiles", str(folder), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("vdno-sim listening on 127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        port = int(line.strip().rsplit(":", 1)[1])
        with FrameClient("127.0.0.1", port, timeout=5) as client:
            assert client.list() == tuple(sorted([LAB_DEVICE.hex(), RTDS_DEVICE.hex()]))
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_cli_tray_file_and_errors(world: World, tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    write_tray([lab_device(world).to_profile()], folder)
    tray_file = tmp_path / "tray.json"
    tray_file.write_text(json.dumps({"devices": [f"profiles/{LAB_DEVICE.hex()}.json"]}))
    assert Tray.from_tray_file(tray_file).device_ids() == [LAB_DEVICE.hex()]

    bad = subprocess.run([*_cli(), "serve", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "give exactly one of --profiles DIR or --devices FILE" in bad.stderr
    both = subprocess.run(
        [*_cli(), "serve", "--profiles", str(folder), "--devices", str(tray_file), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 2 and "give exactly one of" in both.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run(
        [*_cli(), "serve", "--profiles", str(empty)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "no device profiles" in bad.stderr
