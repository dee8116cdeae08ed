"""Trays of simulated lab meters made from a lab state folder (`vdno-labdcc init`, `vdno-server init`): device
keys and certificates from the lab device CA, root cell = the lab root, NO cells = a vanilla generation; the
triage port answers unsigned CS02a/CS02e reads. Used by the benchmark and the integration tests."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from vdno.client.errors import DeviceRefusedError
from vdno.device_frames import RESP_GBCS, decode_reply, send_body
from vdno.gbcs.smki import load_certificate
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.store import read_certificate
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.lab import LabCredentialSet, export_device_credentials, lab_meter_profile, tray_device_id
from vdno.simulator.profile import DeviceProfile
from vdno.simulator.tray import Tray

__all__ = ["InProcessTransport", "tray_device_id", "vanilla_tray_profiles"]


def vanilla_tray_profiles(
    state: Path, count: int, first: int = 1, generation: int = 1, require_acb_mac: bool = True
) -> list[DeviceProfile]:
    """`count` fresh lab meters in stock on vanilla `generation` (device ids tray_device_id(first...)). With
    require_acb_mac (as real meters), their ACB KA cell holds the lab ACB's certificate (`vdno-labdcc init`)
    and they accept a CS02b command only with its ACB-SMD MAC; their certificates and keys are exported to
    STATE/keystore/, where the lab ACB finds them."""
    pki = LabHierarchy.load(state / "pki")
    ds = read_certificate(state / "pki" / f"vanilla-g{generation}-ds.pem")
    holder = LabCredentialSet(
        load_certificate(ds.public_bytes(Encoding.DER)).entity_id,
        ds,
        read_certificate(state / "pki" / f"vanilla-g{generation}-ka.pem"),
    )
    acb_ka = read_certificate(state / "acb" / "acb-ka.pem") if require_acb_mac else None
    profiles = [
        lab_meter_profile(
            tray_device_id(i),
            pki.device_ca,
            pki.root.certificate,
            holder,
            acb_ka,
            require_acb_mac=require_acb_mac,
        )
        for i in range(first, first + count)
    ]
    if require_acb_mac:
        export_device_credentials(profiles, state / "keystore")
    return profiles


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
