"""A tray of simulated vanilla meters made from a `vdno-server init` state folder: device keys and
certificates from the lab device CA, root cell = the lab root, NO cells = vanilla generation 1. Lab
settings: no ACB (MAC checking off) and the triage port answers unsigned CS02a/CS02e reads.
Used by the demo, the benchmark and the integration tests."""

from __future__ import annotations

from pathlib import Path

from client.errors import DeviceRefusedError
from gbcs.cells import NO_DS_CELL, NO_KA_CELL
from labpki.hierarchy import LabHierarchy
from labpki.store import read_certificate
from simulator.device import SimulatedDevice
from simulator.frames import RESP_GBCS, decode_reply, send_body
from simulator.lab import make_device_profile
from simulator.profile import ROOT_CELL, DeviceProfile
from simulator.tray import Tray


def tray_device_id(index: int) -> bytes:
    return bytes.fromhex("00db5eed") + index.to_bytes(4, "big")


def vanilla_tray_profiles(
    state: Path, count: int, first: int = 1, generation: int = 1
) -> list[DeviceProfile]:
    pki = LabHierarchy.load(state / "pki")
    cells = {
        ROOT_CELL: pki.root.certificate,
        NO_DS_CELL: read_certificate(state / "pki" / f"vanilla-g{generation}-ds.pem"),
        NO_KA_CELL: read_certificate(state / "pki" / f"vanilla-g{generation}-ka.pem"),
    }
    return [
        make_device_profile(
            tray_device_id(i),
            pki.device_ca,
            cells,
            seq_numbers={3: 0},
            require_acb_mac=False,
            allow_local_reads=True,
        )
        for i in range(first, first + count)
    ]


class InProcessTransport:
    """The bench client's DeviceTransport over an in-process simulator.tray.Tray: the same request and
    reply bodies as the tray server, without the socket, so refusals come back as over the wire
    (client.errors.DeviceRefusedError). `devices` gives the simulated meters by id, to look inside them."""

    def __init__(self, profiles: list[DeviceProfile]) -> None:
        self.devices = {p.device_id: SimulatedDevice(p) for p in profiles}
        self.tray = Tray(self.devices.values())

    def send(self, device_id: bytes, message: bytes) -> bytes:
        try:
            body = send_body(bytes(device_id), bytes(message))
        except ValueError as exc:  # not an 8-byte id: no device of the tray has it
            raise DeviceRefusedError(None, f"unknown device {bytes(device_id).hex()}") from exc
        reply = decode_reply(self.tray.handle(body))
        if reply.kind != RESP_GBCS:
            raise DeviceRefusedError(reply.status, reply.reason)
        return reply.data

    def list_devices(self) -> list[bytes]:
        return [bytes.fromhex(device_id) for device_id in self.tray.device_ids()]
