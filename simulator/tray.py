"""A tray of simulated devices, addressable by device id, in-process or over loopback TCP (the frame
protocol of vdno/device_frames.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vdno.device_frames import (
    DEVICE_ID_LEN,
    OP_LIST,
    OP_SEND,
    RESP_GBCS,
    RESP_LIST,
    FrameError,
    encode_frame,
    error_body,
    read_frame,
)
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.errors import DeviceRefused, ProfileError
from vdno.simulator.profile import DeviceProfile, load_profile, profile_from_dict

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class Tray:
    """Devices by id. `handle(body)` maps a request body to a reply body and never raises."""

    def __init__(self, devices: Iterable[SimulatedDevice] = ()) -> None:
        self._devices: dict[bytes, SimulatedDevice] = {}
        self._lock = threading.Lock()
        for device in devices:
            self.add(device)

    @classmethod
    def from_profiles(cls, profiles: Iterable[DeviceProfile]) -> Tray:
        return cls(SimulatedDevice(p) for p in profiles)

    @classmethod
    def from_directory(cls, folder: Path | str) -> Tray:
        """Every `*.json` in folder is one device profile."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ProfileError(f"{folder}: not a directory")
        return cls.from_profiles(load_profile(p) for p in sorted(folder.glob("*.json")))

    @classmethod
    def from_tray_file(cls, path: Path | str) -> Tray:
        """A JSON file {"devices": [<profile object> | "<profile file, relative to the tray file>", ...]}."""
        path = Path(path)
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProfileError(f"{path}: cannot read tray file: {exc}") from exc
        entries = data.get("devices") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ProfileError(f'{path}: expected {{"devices": [...]}}')
        profiles = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                ref = Path(entry)
                profiles.append(load_profile(ref if ref.is_absolute() else path.parent / ref))
            else:
                profiles.append(profile_from_dict(entry, path.parent, f"{path}: devices[{i}]"))
        return cls.from_profiles(profiles)

    def add(self, device: SimulatedDevice) -> None:
        with self._lock:
            if device.device_id in self._devices:
                raise ProfileError(f"device {device.device_id.hex()} is already in the tray")
            self._devices[device.device_id] = device

    def get(self, device_id: bytes) -> SimulatedDevice | None:
        with self._lock:
            return self._devices.get(bytes(device_id))

    def device_ids(self) -> list[str]:
        with self._lock:
            return sorted(d.hex() for d in self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def handle(self, body: bytes) -> bytes:
        """Request body -> reply body (RESP_GBCS / RESP_LIST / RESP_ERROR)."""
        if not body:
            return error_body(None, "malformed frame: empty body")
        op = body[0]
        if op == OP_LIST:
            if len(body) != 1:
                return error_body(None, "malformed frame: LIST takes no data")
            return bytes([RESP_LIST]) + json.dumps(self.device_ids()).encode("utf-8")
        if op == OP_SEND:
            if len(body) < 1 + DEVICE_ID_LEN + 1:
                return error_body(None, "malformed frame: SEND needs an 8-byte device id and a message")
            device_id = body[1 : 1 + DEVICE_ID_LEN]
            device = self.get(device_id)
            if device is None:
                return error_body(None, f"unknown device {device_id.hex()}")
            try:
                return bytes([RESP_GBCS]) + device.process(body[1 + DEVICE_ID_LEN :])
            except DeviceRefused as exc:
                return error_body(exc.status, f"device {device_id.hex()} refused: {exc.reason}")
            except Exception as exc:  # a simulator bug must not kill the connection thread
                log.exception("device %s failed", device_id.hex())
                return error_body(None, f"device {device_id.hex()} internal error: {type(exc).__name__}")
        return error_body(None, f"unknown op {op:#04x}")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(self.server.idle_timeout)
        self.server.track(self.request, add=True)

    def finish(self) -> None:
        self.server.track(self.request, add=False)

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                body = read_frame(sock)
            except FrameError as exc:
                if exc.kind in ("empty", "too_large"):
                    self._send(error_body(None, f"malformed frame: {exc}"))
                return  # eof, truncated, timeout, io: just close
            reply = self.server.tray.handle(body)
            if not self._send(reply):
                return

    def _send(self, body: bytes) -> bool:
        try:
            self.request.sendall(encode_frame(body))
            return True
        except (OSError, ValueError):
            return False


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], tray: Tray, idle_timeout: float) -> None:
        self.tray = tray
        self.idle_timeout = idle_timeout
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class TrayServer:
    """Threaded TCP server for a tray, loopback only. `start()` returns the bound port; `stop()` ends it."""

    def __init__(
        self, tray: Tray, host: str = "127.0.0.1", port: int = 0, idle_timeout: float = 30.0
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the simulator tray listens on loopback only, not {host!r}")
        self.tray = tray
        self.host = "127.0.0.1" if host == "localhost" else host
        self.requested_port = port
        self.idle_timeout = idle_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    def start(self) -> int:
        if self._server is not None:
            return self.port
        server = _Server((self.host, self.requested_port), self.tray, self.idle_timeout)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="vdno-sim-tray", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> TrayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
