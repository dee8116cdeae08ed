"""Hand-in: bringing a triaged meter into vanilla custody through the DNO whose credentials it holds.

The custodian never holds DNO keys, so a hand-in is a round trip through the outside world:
1. order: a bench reads the meter; the service checks who holds its NO cells and records an order for the
   active vanilla generation, keeping the NO seq number as read;
2. export: per order, the DUIS 6.15.1 service request (CommandVariant 6, local delivery) that the area DNO's
   DCC adapter completes (its own originator counter), signs and submits;
3. import: the command DCC returns (MAC-framed, signed by the area DNO) is checked against its order;
4. apply: any enrolled bench fetches it, applies it and reports the meter's signed response, which the
   service verifies before its records say the meter holds vanilla generation g.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from vdno.duis.errors import DuisError
from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    ServiceRequest,
    UpdateSecurityCredentialsKrp,
    decode_local_command_response,
    encode_request,
)
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, CredentialsReplacementMode
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand
from vdno.gbcs.errors import GbcsError, SignatureError
from vdno.gbcs.framing import (
    GENERAL_CIPHERING_TAG,
    GENERAL_SIGNING_TAG,
    SIGNATURE_LEN,
    Cra,
    MessageCode,
    decode_message,
)
from vdno.gbcs.ids import eui64_hex
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.server.domain.errors import (
    HandInCommandRefused,
    InvalidRequest,
    OutcomeRejected,
    OutstandingCommand,
    RequestIdConflict,
    UnknownArea,
    UnknownOrder,
)
from vdno.server.domain.outcomes import (
    ExpectedCells,
    MeterOutcome,
    check_credentials_answer,
    check_meter_response,
)
from vdno.server.domain.policy import (
    TrustAnchors,
    check_device_certificate,
    hand_in_target,
    holder_of_network_operator_cell,
    read_network_operator_cells,
    require_enrolled,
    require_enrolled_officer,
)
from vdno.server.domain.ports import HandInStore
from vdno.server.domain.values import (
    Area,
    AuthorisedHandIn,
    BenchOperation,
    ExportedHandIn,
    HandInDraft,
    HandInOrder,
    HandInRequest,
    HandInStatus,
    VanillaGeneration,
)

Clock = Callable[[], datetime]

# DUIS 6.15.1 service request for a hand-in (CommandVariant 6: the command returns for local delivery).
SERVICE_REFERENCE = "6.15"
SERVICE_REFERENCE_VARIANT = "6.15.1"
COMMAND_VARIANT_LOCAL_DELIVERY = 6
# The RequestID's counter is the DNO's to set: the export carries this placeholder and the manifest says so.
REQUEST_COUNTER_PLACEHOLDER = 0
# The custodian's seq-number floor once it holds the NO cells (GBCS 13.3.5 newRemotePartyFloorSeqNumber).
HAND_IN_FLOOR = 0
MAX_COMMAND_BYTES = 16 * 1024
CERTIFICATE_MEMO = 256


def build_hand_in_request(order: HandInOrder, generation: VanillaGeneration, issuing_ca: bytes) -> bytes:
    """The DUIS 6.15.1 request the area DNO completes for `order`: RemotePartyRole NetworkOperator, the
    generation's DS and KA certificates as replacements, the issuing CA as certification path, floor
    HAND_IN_FLOOR, time-based CPV checks applied, CommandVariant 6; RequestID originator = the area DNO,
    target = the device, counter = REQUEST_COUNTER_PLACEHOLDER (the DNO's adapter sets its own)."""
    return encode_request(
        ServiceRequest(
            request_id=RequestId(order.area_entity_id, order.device_id, REQUEST_COUNTER_PLACEHOLDER),
            command_variant=COMMAND_VARIANT_LOCAL_DELIVERY,
            service_reference=SERVICE_REFERENCE,
            service_reference_variant=SERVICE_REFERENCE_VARIANT,
            body=UpdateSecurityCredentialsKrp(
                remote_party_role="NetworkOperator",
                floor_seq_number=HAND_IN_FLOOR,
                digital_signing_certificate=generation.ds_certificate,
                key_agreement_certificate=generation.ka_certificate,
                certification_path=(issuing_ca,),
                apply_time_based_cpv_checks=True,
                execution_date_time=None,
            ),
        )
    )


def manifest_record(order: HandInOrder, area: Area, generation: VanillaGeneration) -> dict[str, Any]:
    """One line of an area's manifest.jsonl: what the DNO is asked to sign, and the bounds its command must
    meet (GBCS 13.3.5: its authorising seq number and originator counter must exceed the meter's stored
    seq number)."""
    device = eui64_hex(order.device_id)
    return {
        "orderId": order.order_id,
        "file": f"{device}-{order.order_id}.xml",
        "device": device,
        "area": area.area_id,
        "areaName": area.name,
        "originator": eui64_hex(order.area_entity_id),
        "generation": generation.generation,
        "vanillaEntity": eui64_hex(generation.entity_id),
        "serviceReferenceVariant": SERVICE_REFERENCE_VARIANT,
        "commandVariant": COMMAND_VARIANT_LOCAL_DELIVERY,
        "requestId": str(RequestId(order.area_entity_id, order.device_id, REQUEST_COUNTER_PLACEHOLDER)),
        "requestIdCounter": "set by the DNO: its next originator counter, which it also signs",
        "storedSeqNumber": order.seq_number,
        "minimumSeqNumber": order.seq_number + 1,
        "floorSeqNumber": HAND_IN_FLOOR,
        "orderedAt": order.created_at.isoformat(),
        "bench": order.bench_id,
    }


def read_returned_command(payload: bytes) -> bytes:
    """The GBCS bytes of a returned command: GBCS bytes as they are, a DUIS response carrying
    sr:LocalCommand/sr:GBCSPayload, or GBCS as hex text. InvalidRequest naming what could not be read."""
    data = bytes(payload)
    if data[:1] in (bytes([GENERAL_CIPHERING_TAG]), bytes([GENERAL_SIGNING_TAG])):
        return data  # binary GBCS: every byte counts, including any that look like white space
    text = data.strip()
    if not text:
        raise InvalidRequest("payload is empty: expected a DUIS LocalCommand response or GBCS bytes")
    if text[:1] == b"<":
        try:
            return decode_local_command_response(text).gbcs_payload
        except DuisError as exc:
            raise InvalidRequest(f"payload is not a usable DUIS LocalCommand response: {exc}") from exc
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest(
            "payload is neither DUIS XML, GBCS bytes (DD/DF ...) nor GBCS as hex text"
        ) from None


def check_hand_in_command(
    data: bytes,
    order: HandInOrder,
    area: Area,
    generation: VanillaGeneration,
    issuing_ca: bytes,
    certificate: Callable[[bytes], SmkiCertificate],
) -> AuthorisedHandIn:
    """The returned command does exactly what `order` asked of the area DNO. HandInCommandRefused (or
    InvalidRequest for bytes that do not decode) naming the first check that fails."""
    if len(data) > MAX_COMMAND_BYTES:
        raise InvalidRequest(f"command is {len(data)} bytes; a CS02b command is at most {MAX_COMMAND_BYTES}")
    try:
        message = decode_message(data)
        header = message.apdu.header
        payload = UpdateSecurityCredentialsCommand.decode(message.apdu.content)
    except GbcsError as exc:
        raise InvalidRequest(f"command does not decode as a GBCS CS02b command: {exc}") from exc
    device = eui64_hex(order.device_id)

    def refuse(reason: str) -> HandInCommandRefused:
        return HandInCommandRefused(f"command for order {order.order_id} (device {device}) refused: {reason}")

    if header.cra is not Cra.COMMAND:
        raise refuse(f"CRA flag {int(header.cra)} is not 1 (command)")
    if header.message_code != MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise refuse(f"message code 0x{header.message_code:04X} is not 0x0103 (CS02b mode 3)")
    control = payload.control
    if control.mode != CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise refuse(f"credentialsReplacementMode {control.mode} is not 3 (networkOperatorByNetworkOperator)")
    if header.business_target_id != order.device_id:
        raise refuse(f"it is addressed to {eui64_hex(header.business_target_id)}, not to the ordered device")
    if header.business_originator_id != order.area_entity_id:
        raise refuse(
            f"it comes from {eui64_hex(header.business_originator_id)}, not from area {area.area_id}'s DNO "
            f"{eui64_hex(order.area_entity_id)}, which holds the meter's NO cells"
        )
    if control.ta_cell != NO_DS_CELL:
        raise refuse(
            f"the authorising trust-anchor cell {control.ta_cell} is not the NO digital-signing cell"
        )
    if message.apdu.signature is None or len(message.apdu.signature) != SIGNATURE_LEN:
        raise refuse("it carries no KRP signature")
    try:
        verify_message_signature(message, certificate(area.ds_certificate).certificate)
    except SignatureError:
        raise refuse(
            f"its KRP signature does not verify with area {area.area_id}'s registered DS certificate"
        ) from None
    targets = [r.target for r in payload.replacements]
    if len(targets) != 2 or set(targets) != {NO_DS_CELL, NO_KA_CELL}:
        raise refuse(f"it must replace exactly the NO DS and NO KA cells, not {targets}")
    wanted = {NO_DS_CELL: generation.ds_certificate, NO_KA_CELL: generation.ka_certificate}
    for replacement in payload.replacements:
        if bytes(replacement.certificate) != wanted[replacement.target]:
            usage = "DS" if replacement.target == NO_DS_CELL else "KA"
            raise refuse(
                f"its NO {usage} replacement is not vanilla generation {generation.generation}'s {usage} "
                "certificate"
            )
    if payload.certification_path_certificates != (issuing_ca,):
        raise refuse("its certification path is not exactly the SMKI issuing CA certificate")
    if control.seq_number <= order.seq_number:
        raise refuse(
            f"authorisingRemotePartySeqNumber {control.seq_number} is not above the meter's stored NO seq "
            f"number {order.seq_number}"
        )
    if control.seq_number != header.originator_counter:  # gbcs/README.md §8.1: equal in every RTDS command
        raise refuse(
            f"authorisingRemotePartySeqNumber {control.seq_number} is not its Originator Counter "
            f"{header.originator_counter}"
        )
    if control.floor_seq_number != HAND_IN_FLOOR:
        raise refuse(f"newRemotePartyFloorSeqNumber {control.floor_seq_number} is not {HAND_IN_FLOOR}")
    if control.apply_time_based_cpv_checks not in (None, 0):
        raise refuse("it disapplies the time-based certificate path checks")
    if (
        control.plaintext_symmetric_key is not None
        or control.specialist_floor_seq_numbers is not None
        or control.other_seq_number_changes is not None
    ):
        raise refuse(
            "it carries fields a hand-in does not ask for (a symmetric key or other seq-number changes)"
        )
    if payload.execution_date_time is not None:
        raise refuse("it is future-dated; a hand-in executes at once")
    if not message.mac_framed:
        raise refuse("it is not MAC-framed: the meter requires DCC's ACB-SMD MAC")
    return AuthorisedHandIn(order.order_id, bytes(data), header.originator_counter, True)


# Settles a meter's released, unreported hand-out or rotation from a reading that proves it applied
# (HandOutService.settle_from_reading): (device id, device certificate, CS02a answer, actor) -> settled.
Settle = Callable[[bytes, bytes, bytes, str], object | None]


class HandInService:
    """The hand-in workflows. Thread-safe (the store serialises writes); one instance per process."""

    def __init__(
        self, store: HandInStore, anchors: TrustAnchors, clock: Clock, settle: Settle | None = None
    ) -> None:
        self._store = store
        self._anchors = anchors
        self._device_ca = load_certificate(anchors.device_ca)
        self._clock = clock
        self._settle = settle
        self._certificate: Callable[[bytes], SmkiCertificate] = functools.lru_cache(CERTIFICATE_MEMO)(
            load_certificate
        )

    # -- benches (the caller checks the bench first: require_bench)
    def require_bench(self, bench_id: str, certificate_sha256: str | None = None) -> None:
        """BenchNotEnrolled / OperationNotAllowed unless the bench may do hand-ins, read afresh."""
        require_enrolled(
            bench_id, self._store.read_bench(bench_id), BenchOperation.HAND_IN, certificate_sha256
        )

    def order(self, request: HandInRequest) -> HandInOrder:
        """Record (or find again, for a retry) the order for the meter the bench read."""
        existing = self._store.find_hand_in_order(request.bench_id, request.request_id)
        if existing is not None:
            return self._same_request(existing, request)
        device_cert = check_device_certificate(
            request.device_id, request.device_certificate, self._device_ca, self._clock()
        )
        cells = read_network_operator_cells(request.device_id, request.credentials_response, device_cert)
        generations = self._store.list_generations()
        area = holder_of_network_operator_cell(
            request.device_id, cells.signing, self._store.list_areas(), generations, self._certificate
        )
        target = hand_in_target(generations)
        self._require_no_outstanding_command(request)
        draft = HandInDraft(
            bench_id=request.bench_id,
            request_id=request.request_id,
            request_fingerprint=request.fingerprint(),
            device_id=request.device_id,
            area_id=area.area_id,
            area_entity_id=area.entity_id,
            seq_number=cells.seq_number or 0,
            generation=target.generation,
            device_certificate=request.device_certificate,
        )
        order, created = self._store.record_hand_in_order(draft)
        return order if created else self._same_request(order, request)

    def _require_no_outstanding_command(self, request: HandInRequest) -> None:
        """One outstanding command per meter: a hand-out or rotation released for it and not yet reported
        holds it, unless the reading proves that command applied (then its outcome is recorded first)."""
        outstanding = self._store.outstanding_issuance(request.device_id)
        if outstanding is None:
            return
        if outstanding.signed_command is not None and self._settle is not None:
            actor = f"bench:{request.bench_id}"
            self._settle(request.device_id, request.device_certificate, request.credentials_response, actor)
            outstanding = self._store.outstanding_issuance(request.device_id)
            if outstanding is None:
                return
        raise OutstandingCommand(
            f"device {request.device_id.hex()} has an outstanding command: {outstanding.describe()}; its "
            "outcome must be reported (or the command cancelled) first"
        )

    @staticmethod
    def _same_request(order: HandInOrder, request: HandInRequest) -> HandInOrder:
        if order.request_fingerprint != request.fingerprint():
            raise RequestIdConflict(f"request id {request.request_id!r} was already used for another device")
        return order

    def authorised_commands(self, device_ids: Sequence[bytes]) -> list[HandInOrder]:
        if len(device_ids) > 1000:
            raise InvalidRequest("device_ids: at most 1000 meters per call")
        return self._store.authorised_hand_ins(list(dict.fromkeys(device_ids)))

    def report_outcome(
        self, bench_id: str, order_id: int, response: bytes, credentials_answer: bytes = b""
    ) -> MeterOutcome:
        """The meter's signed CS02b response to the order's command, or (the bench found the meter already
        on the vanilla generation and did not send it again) its CS02a answer read after the command was
        authorised, by the evidence rule of server/domain/outcomes.py. Recorded once; a later answer that
        verifies to the same status answers the same."""
        if bool(response) == bool(credentials_answer):
            raise InvalidRequest(
                "give exactly one of response (the meter's signed CS02b response) and credentials_answer "
                "(its signed CS02a answer)"
            )
        order = self._store.get_hand_in_order(order_id)
        if order is None:
            raise UnknownOrder(f"no hand-in order {order_id}")
        if order.command is None or order.counter is None:
            raise OutcomeRejected(f"hand-in order {order_id} has no authorised command to report on")
        outcome = self._verify(order, response, credentials_answer)
        if order.outcome_response is not None:
            if order.status.value != outcome.status.value:
                raise OutcomeRejected(
                    f"an outcome ({order.status.value}) was already recorded for hand-in order {order_id}"
                )
            return outcome
        self._store.record_hand_in_outcome(
            order.order_id, outcome, response or credentials_answer, f"bench:{bench_id}"
        )
        return outcome

    def _verify(self, order: HandInOrder, response: bytes, credentials_answer: bytes) -> MeterOutcome:
        assert order.counter is not None
        generation = self._generation(order.generation)
        expected = ExpectedCells(
            generation.entity_id,
            self._certificate(generation.ds_certificate).subject_key_identifier,
            self._certificate(generation.ka_certificate).subject_key_identifier,
        )
        device_certificate = self._certificate(order.device_certificate).certificate
        if credentials_answer:
            authorised = order.authorised_at or order.created_at
            return check_credentials_answer(
                credentials_answer,
                device_id=order.device_id,
                device_certificate=device_certificate,
                expected=expected,
                floor_seq_number=HAND_IN_FLOOR,
                read_after=int(authorised.timestamp() * 1_000_000),
                now=int(self._clock().timestamp() * 1_000_000),
            )
        return check_meter_response(
            response,
            device_id=order.device_id,
            device_certificate=device_certificate,
            command_originator=order.area_entity_id,
            counter=order.counter,
            expected=expected,
        )

    # -- officers
    def require_officer(self, officer_id: str) -> None:
        require_enrolled_officer(officer_id, self._store.get_officer(officer_id))

    def list_orders(
        self, officer_id: str, area_id: int | None, status: HandInStatus | None
    ) -> list[HandInOrder]:
        self.require_officer(officer_id)
        return self._store.list_hand_in_orders(area_id, status)

    def export(self, officer_id: str, area_id: int | None) -> list[ExportedHandIn]:
        """The DUIS requests of every order awaiting authorisation (of one area, or all); audited."""
        self.require_officer(officer_id)
        orders = self._store.list_hand_in_orders(area_id, HandInStatus.AWAITING)
        exported = []
        for order in orders:
            area = self._area(order.area_id)
            generation = self._generation(order.generation)
            exported.append(
                ExportedHandIn(
                    order,
                    build_hand_in_request(order, generation, self._anchors.issuing_ca),
                    manifest_record(order, area, generation),
                )
            )
        if orders:
            self._store.record_export(orders, f"officer:{officer_id}")
        return exported

    def import_command(self, officer_id: str, payload: bytes) -> HandInOrder:
        """Check a returned command against its order and authorise the order. Importing a command that is
        already recorded changes nothing and returns its order."""
        self.require_officer(officer_id)
        data = read_returned_command(payload)
        try:
            device_id = decode_message(data).apdu.header.business_target_id
        except GbcsError as exc:
            raise InvalidRequest(f"command does not decode as GBCS: {exc}") from exc
        orders = self._store.hand_in_orders_of(device_id)
        for previous in orders:
            if previous.command == data:
                return previous  # imported before: nothing changes
        order = next((o for o in orders if o.status.outstanding), None)
        if order is None:
            raise UnknownOrder(f"no hand-in order awaiting authorisation for device {eui64_hex(device_id)}")
        if order.status is HandInStatus.AUTHORISED:
            raise HandInCommandRefused(
                f"hand-in order {order.order_id} for device {eui64_hex(device_id)} is already authorised "
                f"with another command (originator counter {order.counter})"
            )
        authorised = check_hand_in_command(
            data,
            order,
            self._area(order.area_id),
            self._generation(order.generation),
            self._anchors.issuing_ca,
            self._certificate,
        )
        return self._store.authorise_hand_in(authorised, f"officer:{officer_id}")

    # -- reference data
    def _area(self, area_id: int) -> Area:
        area = self._store.get_area(area_id)
        if area is None:
            raise UnknownArea(f"area {area_id} is no longer registered")
        return area

    def _generation(self, number: int) -> VanillaGeneration:
        for generation in self._store.list_generations():
            if generation.generation == number:
                return generation
        raise HandInCommandRefused(f"vanilla generation {number} is no longer registered")
