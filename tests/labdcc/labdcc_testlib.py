"""A lab DCC state folder with lab parties, a vanilla credential set and simulated devices, for the labdcc
and DCC-gateway tests. Devices' certificates go into the state's keystore (the lab SMKI inventory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from lab_testlib import cs02b_command, der, org

from vdno.duis.ids import RequestId
from vdno.duis.messages import ServiceRequest, SignedPreCommand, UpdateSecurityCredentialsKrp, encode_request
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL
from vdno.gbcs.cs02b import TrustAnchorReplacement
from vdno.labdcc.parties import LabParties, LabParty, ensure_lab_parties
from vdno.labpki.smki import CertifiedKey
from vdno.labpki.store import export_keystore
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.lab import make_device_profile
from vdno.simulator.profile import ACB_KA_CELL, ROOT_CELL

VANILLA_ID = b"VDNO\x00\x00\x00\x01"
AREA = 14
OTHER_AREA = 15


@dataclass(frozen=True)
class Vanilla:
    """The custodian's vanilla NO credentials (software keys here), exported into the keystore."""

    ds: CertifiedKey
    ka: CertifiedKey

    @property
    def entity_id(self) -> bytes:
        return VANILLA_ID


@dataclass(frozen=True)
class LabSetup:
    state: Path
    parties: LabParties
    vanilla: Vanilla

    @property
    def issuing_ca_der(self) -> bytes:
        return der(self.parties.hierarchy.issuing_ca.certificate)

    def dno(self, area_id: int = AREA) -> LabParty:
        return self.parties.dno(area_id)

    def device(self, device_id: bytes, area_id: int | None = AREA) -> SimulatedDevice:
        """A device whose NO cells hold the area DNO's certificates (or the vanilla ones when area_id is
        None), root cell the lab root, ACB KA cell the lab ACB's; seq number {3: 5}. Its certificates are
        exported to the keystore so the lab ACB finds its KA certificate."""
        if area_id is None:
            no_ds, no_ka = self.vanilla.ds.certificate, self.vanilla.ka.certificate
        else:
            no_ds, no_ka = self.dno(area_id).ds.certificate, self.dno(area_id).ka.certificate
        cells = {
            ROOT_CELL: self.parties.hierarchy.root.certificate,
            NO_DS_CELL: no_ds,
            NO_KA_CELL: no_ka,
            ACB_KA_CELL: self.parties.acb.ka.certificate,
        }
        profile = make_device_profile(device_id, self.parties.hierarchy.device_ca, cells, seq_numbers={3: 5})
        assert profile.device_ds.certificate is not None and profile.device_ka.certificate is not None
        export_keystore(
            self.state / "keystore",
            [
                x509.load_der_x509_certificate(profile.device_ds.certificate),
                x509.load_der_x509_certificate(profile.device_ka.certificate),
            ],
        )
        return SimulatedDevice(profile)

    def krp_request(
        self,
        device_id: bytes,
        area_id: int = AREA,
        *,
        originator: bytes | None = None,
        command_variant: int = 6,
        counter: int = 1,
        ds: bytes | None = None,
        ka: bytes | None = None,
        role: str = "NetworkOperator",
        floor: int | None = 0,
        apply_time_based_cpv_checks: bool = True,
        without_ka: bool = False,
    ) -> bytes:
        """The custodian's 6.15.1 export: move the device's NO cells onto the vanilla certificates."""
        body = UpdateSecurityCredentialsKrp(
            remote_party_role=role,
            floor_seq_number=floor,
            digital_signing_certificate=der(self.vanilla.ds.certificate) if ds is None else ds,
            key_agreement_certificate=None
            if without_ka
            else der(self.vanilla.ka.certificate)
            if ka is None
            else ka,
            certification_path=(self.issuing_ca_der,),
            apply_time_based_cpv_checks=apply_time_based_cpv_checks,
        )
        rid = RequestId(originator or self.dno(area_id).entity_id, device_id, counter)
        return encode_request(ServiceRequest(rid, command_variant, "6.15", "6.15.1", body))

    def hand_out(
        self, device_id: bytes, counter: int, area_id: int = AREA, signer: CertifiedKey | None = None
    ) -> bytes:
        """A custodian-signed (vanilla DS key) GS-only CS02b command moving a vanilla device to the area."""
        dno = self.dno(area_id)
        return cs02b_command(
            (signer or self.vanilla.ds).signing_key,
            VANILLA_ID,
            device_id,
            counter,
            (
                TrustAnchorReplacement(der(dno.ds.certificate), NO_DS_CELL),
                TrustAnchorReplacement(der(dno.ka.certificate), NO_KA_CELL),
            ),
            (self.issuing_ca_der,),
        ).encode()


def signed_pre_command_request(command: bytes, rid: RequestId, command_variant: int = 6) -> bytes:
    return encode_request(ServiceRequest(rid, command_variant, "6.15", "6.15.1", SignedPreCommand(command)))


def make_lab(state: Path) -> LabSetup:
    parties = ensure_lab_parties(state)
    issuing = parties.hierarchy.issuing_ca
    vanilla = Vanilla(org(issuing, VANILLA_ID, 3, "ds"), org(issuing, VANILLA_ID, 3, "ka"))
    export_keystore(state / "keystore", [vanilla.ds.certificate, vanilla.ka.certificate])
    return LabSetup(state, parties, vanilla)
