"""The lab DCC: takes DUIS requests, has the lab DNO sign and the lab ACB MAC, answers with the DUIS
LocalCommand response (CommandVariant 6: the command returned for local delivery)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from vdno.duis.errors import DuisError
from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    SUCCESS,
    UPDATE_SECURITY_CREDENTIALS_KRP,
    LocalCommandResponse,
    ServiceRequest,
    SignedPreCommand,
    UpdateSecurityCredentialsKrp,
    decode_request,
    encode_local_command_response,
)
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import decode_message
from vdno.labdcc.acb import LabAcb
from vdno.labdcc.counters import OriginatorCounters
from vdno.labdcc.dno import LOCAL_DELIVERY, LabDno, check_request
from vdno.labdcc.errors import RequestRefused
from vdno.labdcc.parties import LabParties, load_lab_parties

COUNTERS_FILE = Path("labdcc") / "counters.json"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LabDcc:
    """DCC and its ACB, and the 14 area DNOs, over one state folder (made by `vdno-labdcc init`).
    Thread-safe: the only shared mutable state, the DNO counters, is locked."""

    def __init__(self, state: Path, clock: Callable[[], datetime] = _utc_now) -> None:
        self.state = Path(state)
        self.parties: LabParties = load_lab_parties(self.state)
        self.counters = OriginatorCounters(self.state / COUNTERS_FILE)
        self.acb = LabAcb(self.parties.acb, self.state / "keystore")
        self._clock = clock

    def answer_request(self, request_xml: bytes) -> bytes:
        """A 6.15.1 UpdateSecurityCredentialsKRP CV 6 request -> the area DNO signs, the ACB MACs -> the
        LocalCommand response, whose RequestID carries the DNO's counter and whose GBCSPayload is the
        command exactly as the device must receive it. RequestRefused naming why otherwise."""
        request = _decode(request_xml)
        if not isinstance(request.body, UpdateSecurityCredentialsKrp):
            raise RequestRefused(
                f"request {request.request_id}: sr:Body is sr:SignedPreCommand; a DNO completes "
                "sr:UpdateSecurityCredentialsKRP requests"
            )
        originator = request.request_id.originator
        party = self.parties.dno_by_entity_id(originator)
        if party is None:
            raise RequestRefused(
                f"request {request.request_id}: originator {originator.hex()} is not one of the lab area DNOs"
            )
        check_request(request, party.entity_id)  # refuse before spending a counter
        self.acb.device_ka_certificate(request.request_id.target)
        completed = LabDno(party, self.counters).complete(request)
        return self._respond(request, completed.request_id, self.acb.add_mac(completed.apdu_bytes))

    def answer_signed_pre_command(self, request_xml: bytes) -> bytes:
        """A SignedPreCommand CV 6 request -> the ACB checks and MACs -> the LocalCommand response."""
        request = _decode(request_xml)
        rid = request.request_id
        body = request.body
        if not isinstance(body, SignedPreCommand):
            raise RequestRefused(f"request {rid}: sr:Body is not sr:SignedPreCommand")
        if request.command_variant != LOCAL_DELIVERY:
            raise RequestRefused(
                f"request {rid}: sr:CommandVariant {request.command_variant} is not {LOCAL_DELIVERY} "
                "(command for local delivery)"
            )
        if request.service_reference_variant != UPDATE_SECURITY_CREDENTIALS_KRP:
            raise RequestRefused(
                f"request {rid}: sr:ServiceReferenceVariant {request.service_reference_variant} is not "
                f"{UPDATE_SECURITY_CREDENTIALS_KRP}; the lab DCC answers Update Security Credentials only"
            )
        if body.execution_date_time is not None:
            raise RequestRefused(
                f"request {rid}: sr:ExecutionDateTime is for commands DCC sends (CV 5), not local delivery"
            )
        return self._respond(request, rid, self.acb.check_and_add_mac(body.gbcs_payload, rid))

    def local_command(self, signed_command: bytes, device_id: bytes) -> bytes:
        """The MAC-framed command for local delivery, after the same checks as answer_signed_pre_command
        (the RequestID being the command's originator : device_id : originator counter)."""
        try:
            header = decode_message(signed_command).apdu.header
            rid = RequestId(header.business_originator_id, bytes(device_id), header.originator_counter)
        except (GbcsError, DuisError) as exc:
            raise RequestRefused(f"signed command for {bytes(device_id).hex()}: {exc}") from exc
        return self.acb.check_and_add_mac(signed_command, rid)

    def _respond(self, request: ServiceRequest, rid: RequestId, command: bytes) -> bytes:
        return encode_local_command_response(
            LocalCommandResponse(
                request_id=rid,
                response_code=SUCCESS,
                response_date_time=self._clock(),
                service_reference=request.service_reference,
                service_reference_variant=request.service_reference_variant,
                gbcs_payload=command,
            )
        )


def _decode(request_xml: bytes) -> ServiceRequest:
    try:
        return decode_request(request_xml)
    except DuisError as exc:
        raise RequestRefused(f"DUIS request does not decode: {exc}") from exc
