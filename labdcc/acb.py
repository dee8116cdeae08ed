"""The lab Access Control Broker: adds the ACB-SMD MAC (GBCS 7.2.5: MAC Header, ECDH between the ACB and
device key-agreement keys) to complete KRP-signed commands, after the checks an ACB makes on a command
submitted to it. Device KA certificates come from the lab's SMKI inventory, `keystore/<device>-ka.pem`;
submitters' DS certificates from `keystore/<originator>-ds.pem`."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.duis.ids import RequestId
from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand
from vdno.gbcs.errors import CertificateError, GbcsError, SignatureError
from vdno.gbcs.framing import Cra, GbcsMessage, MessageCode, decode_message
from vdno.gbcs.mac import add_mac
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.labdcc.errors import LabDccError, RequestRefused
from vdno.labdcc.parties import LabParty
from vdno.labpki.errors import LabPkiError
from vdno.labpki.store import read_certificate

# CS02b codes whose wire form is MAC Header + KRP signature + ACB MAC (not 0x0104, ACB-by-ACB: MAC only;
# not 0x0108/0x0109, recovery and contingency: no MAC Header).
_ACB_MACED_CS02B = frozenset(
    range(MessageCode.CS02B_ROOT_BY_SUPPLIER, MessageCode.CS02B_ANY_BY_CONTINGENCY + 1)
) - {
    MessageCode.CS02B_ACB_BY_ACB,
    MessageCode.CS02B_ANY_EXCEPT_ABNORMAL_ROOT_BY_RECOVERY,
    MessageCode.CS02B_ANY_BY_CONTINGENCY,
}


class LabAcb:
    def __init__(self, party: LabParty, keystore: Path) -> None:
        self.party = party
        self.keystore = Path(keystore)

    def device_ka_certificate(self, device_id: bytes) -> x509.Certificate:
        """The device's KA certificate from the inventory. RequestRefused naming the file when missing."""
        path = self.keystore / f"{device_id.hex()}-ka.pem"
        if not path.is_file():
            raise RequestRefused(
                f"device {device_id.hex()} is not in the lab SMKI inventory: {path} is missing"
            )
        parsed = self._read(path)
        if (
            not parsed.is_device
            or parsed.entity_id != device_id
            or parsed.key_usage != KeyUsage.KEY_AGREEMENT
        ):
            raise LabDccError(f"{path} is not the device KA certificate of {device_id.hex()}")
        return parsed.certificate

    def add_mac(self, signed_apdu: bytes) -> bytes:
        """MAC-frame a complete KRP-signed GS APDU made by a lab DNO: MAC Header ‖ APDU ‖ MAC."""
        message = _signed_gs_apdu(signed_apdu)
        peer = self.device_ka_certificate(message.apdu.header.business_target_id)
        try:
            return add_mac(message.apdu_bytes, message.apdu.header, self.party.ka.signing_key, peer)
        except GbcsError as exc:
            raise LabDccError(f"ACB-SMD MAC: {exc}") from exc

    def check_and_add_mac(self, signed_apdu: bytes, request_id: RequestId) -> bytes:
        """What an ACB does with a signed pre-command submitted under `request_id`: the payload must be a
        KRP-signed CS02b command whose Business Target and Originator IDs are the RequestID's target and
        originator and whose signature verifies with the originator's DS certificate; then add the MAC.
        RequestRefused naming the failed check."""
        message = _signed_gs_apdu(signed_apdu)
        header = message.apdu.header
        if header.cra != Cra.COMMAND or header.message_code not in _ACB_MACED_CS02B:
            raise RequestRefused(
                f"GBCSPayload (CRA {int(header.cra)}, message code {header.message_code:#06x}) is not "
                "a CS02b command that carries an ACB-SMD MAC"
            )
        try:
            UpdateSecurityCredentialsCommand.decode(message.apdu.content)
        except GbcsError as exc:
            raise RequestRefused(f"GBCSPayload: the CS02b command payload does not decode: {exc}") from exc
        if header.business_target_id != request_id.target:
            raise RequestRefused(
                f"GBCSPayload Business Target ID {header.business_target_id.hex()} is not the RequestID "
                f"target {request_id.target.hex()}"
            )
        if header.business_originator_id != request_id.originator:
            raise RequestRefused(
                f"GBCSPayload Business Originator ID {header.business_originator_id.hex()} is not the "
                f"RequestID originator {request_id.originator.hex()}"
            )
        path = self.keystore / f"{request_id.originator.hex()}-ds.pem"
        if not path.is_file():
            raise RequestRefused(
                f"originator {request_id.originator.hex()} is not in the lab SMKI inventory: "
                f"{path} is missing"
            )
        try:
            verify_message_signature(message, self._read(path).certificate)
        except SignatureError as exc:
            raise RequestRefused(f"KRP signature does not verify with {path}: {exc}") from exc
        return self.add_mac(signed_apdu)

    @staticmethod
    def _read(path: Path) -> SmkiCertificate:
        try:
            return load_certificate(read_certificate(path).public_bytes(Encoding.DER))
        except (LabPkiError, CertificateError) as exc:
            raise LabDccError(f"{path}: {exc}") from exc


def _signed_gs_apdu(data: bytes) -> GbcsMessage:
    """A GS-only APDU (DF …) ending in a 64-byte KRP signature. RequestRefused naming what is wrong."""
    try:
        message = decode_message(data)
    except GbcsError as exc:
        raise RequestRefused(f"GBCSPayload is not a GBCS message: {exc}") from exc
    if message.mac_framed:
        raise RequestRefused("GBCSPayload is already MAC-framed; the ACB takes the signed pre-command")
    if not message.apdu.signature:
        raise RequestRefused("GBCSPayload carries no KRP signature (a pre-command, not a signed pre-command)")
    return message
