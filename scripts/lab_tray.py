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
from simulator.errors import DeviceRefused
from simulator.lab import make_device_profile
from simulator.profile import ROOT_CELL, DeviceProfile


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
    """The bench client's DeviceTransport over in-process simulated devices; refusals come back as the
    tray server reports them over the wire (client.errors.DeviceRefusedError)."""

    def __init__(self, profiles: list[DeviceProfile]) -> None:
        self.devices = {p.device_id: SimulatedDevice(p) for p in profiles}

    def send(self, device_id: bytes, message: bytes) -> bytes:
        device = self.devices.get(device_id)
        if device is None:
            raise DeviceRefusedError(None, f"unknown device {device_id.hex()}")
        try:
            return device.process(message)
        except DeviceRefused as exc:
            raise DeviceRefusedError(exc.status, f"device {device_id.hex()} refused: {exc.reason}") from exc

    def list_devices(self) -> list[bytes]:
        return list(self.devices)
