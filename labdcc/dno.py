"""A lab area DNO completing a DUIS 6.15.1 Update Security Credentials (KRP) request: it signs, in
software, the CS02b networkOperatorByNetworkOperator command (message code 0x0103) that replaces a
device's Network Operator cells with the requested certificates (GBCS 13.3.3.1, 13.3.5)."""

from __future__ import annotations

from dataclasses import dataclass

from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    UPDATE_SECURITY_CREDENTIALS,
    UPDATE_SECURITY_CREDENTIALS_KRP,
    ServiceRequest,
    UpdateSecurityCredentialsKrp,
)
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, CredentialsReplacementMode, TrustAnchorCellIdentifier
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
)
from vdno.gbcs.errors import CertificateError, GbcsError
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode
from vdno.gbcs.signature import sign_apdu
from vdno.gbcs.smki import check_replacement_for_cell, load_certificate
from vdno.labdcc.counters import OriginatorCounters
from vdno.labdcc.errors import RequestRefused
from vdno.labdcc.parties import LabParty

LOCAL_DELIVERY = 6  # DUIS CommandVariant: signed command returned for local delivery
NETWORK_OPERATOR = "NetworkOperator"
APPLY_TIME_CPV_DISAPPLY = 1  # applyTimeBasedCPVChecks [1]: absent = apply (the RTDS form)


@dataclass(frozen=True)
class CompletedCommand:
    """The DNO's signed command and the RequestID it completes (originator = DNO, counter = its counter)."""

    request_id: RequestId
    apdu: GeneralSigningApdu

    @property
    def apdu_bytes(self) -> bytes:
        """The General-Signing APDU with its KRP signature (what the ACB MACs)."""
        return self.apdu.encode()


@dataclass(frozen=True)
class CheckedRequest:
    """A 6.15.1 request a DNO will complete: its body and the two replacement certificates (DER)."""

    body: UpdateSecurityCredentialsKrp
    digital_signing_certificate: bytes
    key_agreement_certificate: bytes


class LabDno:
    """One area DNO: its credentials and the shared, persisted originator counters."""

    def __init__(self, party: LabParty, counters: OriginatorCounters) -> None:
        self.party = party
        self._counters = counters

    def complete(self, request: ServiceRequest) -> CompletedCommand:
        """Check the request and sign the command completing it. RequestRefused naming why otherwise."""
        checked = check_request(request, self.party.entity_id)
        body = checked.body
        counter = self._counters.next(self.party.entity_id)
        device_id = request.request_id.target
        command = UpdateSecurityCredentialsCommand(
            AuthorisingRemotePartyControl(
                mode=CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
                seq_number=counter,
                ta_cell=NO_DS_CELL,
                apply_time_based_cpv_checks=None
                if body.apply_time_based_cpv_checks
                else APPLY_TIME_CPV_DISAPPLY,
                floor_seq_number=body.floor_seq_number,
            ),
            (
                TrustAnchorReplacement(checked.digital_signing_certificate, NO_DS_CELL),
                TrustAnchorReplacement(checked.key_agreement_certificate, NO_KA_CELL),
            ),
            body.certification_path,
            body.execution_date_time,
        )
        header = GroupingHeader(
            cra=Cra.COMMAND,
            originator_counter=counter,
            business_originator_id=self.party.entity_id,
            business_target_id=device_id,
            message_code=MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
        )
        try:
            apdu = sign_apdu(GeneralSigningApdu(header, command.encode()), self.party.ds.signing_key)
        except GbcsError as exc:
            raise RequestRefused(
                f"request {request.request_id}: the command cannot be encoded: {exc}"
            ) from exc
        return CompletedCommand(RequestId(self.party.entity_id, device_id, counter), apdu)


def check_request(request: ServiceRequest, dno_id: bytes) -> CheckedRequest:
    """What a DNO checks before completing a 6.15.1 request addressed to it (RequestRefused otherwise)."""
    rid = request.request_id
    if rid.originator != dno_id:
        raise RequestRefused(
            f"request {rid}: originator {rid.originator.hex()} is not this DNO ({dno_id.hex()})"
        )
    if request.command_variant != LOCAL_DELIVERY:
        raise RequestRefused(
            f"request {rid}: sr:CommandVariant {request.command_variant} is not {LOCAL_DELIVERY} "
            "(command for local delivery)"
        )
    if (request.service_reference, request.service_reference_variant) != (
        UPDATE_SECURITY_CREDENTIALS,
        UPDATE_SECURITY_CREDENTIALS_KRP,
    ):
        raise RequestRefused(
            f"request {rid}: service {request.service_reference_variant} is not "
            f"{UPDATE_SECURITY_CREDENTIALS_KRP} Update Security Credentials (KRP)"
        )
    body = request.body
    if not isinstance(body, UpdateSecurityCredentialsKrp):
        raise RequestRefused(f"request {rid}: sr:Body is not sr:UpdateSecurityCredentialsKRP")
    if body.remote_party_role != NETWORK_OPERATOR:
        raise RequestRefused(
            f"request {rid}: sr:RemotePartyRole {body.remote_party_role} is not {NETWORK_OPERATOR}"
        )
    ds_der, ka_der = body.digital_signing_certificate, body.key_agreement_certificate
    if ds_der is None or ka_der is None:
        missing = "sr:DigitalSigningCertificate" if ds_der is None else "sr:KeyAgreementCertificate"
        raise RequestRefused(f"request {rid}: lacks {missing} (both NO cells are replaced together)")
    if (
        body.key_agreement_top_up_certificate is not None
        or body.prepayment_top_up_floor_seq_number is not None
    ):
        raise RequestRefused(
            f"request {rid}: prepayment top-up fields are for suppliers, not network operators"
        )
    ds = _replacement(ds_der, NO_DS_CELL, "sr:DigitalSigningCertificate", rid)
    ka = _replacement(ka_der, NO_KA_CELL, "sr:KeyAgreementCertificate", rid)
    if ds != ka:
        raise RequestRefused(
            f"request {rid}: the DS certificate is for {ds.hex()} but the KA certificate for {ka.hex()}"
        )
    return CheckedRequest(body, ds_der, ka_der)


def _replacement(der: bytes, cell: TrustAnchorCellIdentifier, what: str, rid: RequestId) -> bytes:
    """The entity id of a replacement certificate fit for `cell` (GBCS 13.3.5: role and key usage)."""
    try:
        certificate = load_certificate(der)
        check_replacement_for_cell(certificate, cell)
    except CertificateError as exc:
        raise RequestRefused(
            f"request {rid}: {what} is not fit for the Network Operator cell: {exc}"
        ) from exc
    return certificate.entity_id
