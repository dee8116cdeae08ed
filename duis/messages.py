"""DUIS 5.4 messages for SR 6.15.1 Update Security Credentials (KRP) and its local-delivery answers.

Requests (sr:Request): Header {RequestID, CommandVariant, ServiceReference, ServiceReferenceVariant} and a
Body holding sr:UpdateSecurityCredentialsKRP or sr:SignedPreCommand; an enveloped ds:Signature after the
Body is accepted and ignored (the custodian neither makes nor checks one). Responses (sr:Response): Header
{RequestID?, ResponseID?, ResponseCode, ResponseDateTime} and sr:ResponseMessage {ServiceReference,
ServiceReferenceVariant, sr:LocalCommand/sr:GBCSPayload}. Certificates are X.509 DER, carried as base64.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from vdno.duis.document import (
    DS_NS,
    Children,
    add,
    base64_text,
    check_aware,
    date_time_text,
    leaf_text,
    new_root,
    parse_document,
    read_base64,
    read_bool,
    read_date_time,
    read_int,
    serialise,
)
from vdno.duis.errors import DuisError, ResponseCodeError
from vdno.duis.ids import RequestId

# DUIS XSD sr:RemotePartyRole
REMOTE_PARTY_ROLES = ("ACB", "NetworkOperator", "Recovery", "Root", "Supplier", "TransCoS", "LoadController")
# DUIS XSD sr:ResponseCode
RESPONSE_CODES = ("I0", "I99", "E1", "E2", "E3", "E4", "E5", "E11", "E12", "E120207")
SUCCESS = "I0"
COMMAND_VARIANTS = range(1, 10)  # DUIS XSD sr:CommandVariant
MAX_FLOOR_SEQ_NUMBER = 2**63 - 1  # DUIS XSD sr:floorSequenceNumber
MAX_CERTIFICATION_PATH = 3  # DUIS XSD sr:CertificationPathCertificates

UPDATE_SECURITY_CREDENTIALS = "6.15"
UPDATE_SECURITY_CREDENTIALS_KRP = "6.15.1"

# The shape of the XSD's sr:ServiceReference / sr:ServiceReferenceVariant enumerations (e.g. 6.15, 6.15.1).
_SERVICE_REFERENCE = re.compile(r"[0-9]{1,2}\.[0-9]{1,2}")
_SERVICE_REFERENCE_VARIANT = re.compile(r"[0-9]{1,2}\.[0-9]{1,2}(?:\.[0-9]{1,2})?")

_KRP = "sr:UpdateSecurityCredentialsKRP"
_CERTS = f"{_KRP}/sr:ReplacementCertificates/sr:SupplierOrNetworkOperatorCertificates"
_PATH = f"{_KRP}/sr:CertificationPathCertificates"


def _check_certificate(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise DuisError(f"{what} must be non-empty DER bytes, got {type(value).__name__}")
    try:
        x509.load_der_x509_certificate(value)
    except (ValueError, x509.InvalidVersion) as exc:
        raise DuisError(f"{what} is not an X.509 DER certificate: {exc}") from exc
    return value


def _check_floor(value: object, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise DuisError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_FLOOR_SEQ_NUMBER:
        raise DuisError(f"{what} {value} is outside 0..2**63-1")


@dataclass(frozen=True)
class UpdateSecurityCredentialsKrp:
    """Body of SR 6.15.1 (sr:UpdateSecurityCredentialsKRP). The prepayment top-up fields are for suppliers."""

    remote_party_role: str = "NetworkOperator"
    floor_seq_number: int | None = None
    digital_signing_certificate: bytes | None = None
    key_agreement_certificate: bytes | None = None
    certification_path: tuple[bytes, ...] = ()
    apply_time_based_cpv_checks: bool = True
    execution_date_time: datetime | None = None
    prepayment_top_up_floor_seq_number: int | None = None
    key_agreement_top_up_certificate: bytes | None = None

    def __post_init__(self) -> None:
        if self.remote_party_role not in REMOTE_PARTY_ROLES:
            raise DuisError(
                f"sr:RemotePartyRole {self.remote_party_role!r} is not one of {', '.join(REMOTE_PARTY_ROLES)}"
            )
        _check_floor(self.floor_seq_number, "sr:RemotePartyFloorSeqNumber")
        _check_floor(self.prepayment_top_up_floor_seq_number, "sr:RemotePartyPrepaymentTopUpFloorSeqNumber")
        for what, value in (
            ("sr:DigitalSigningCertificate", self.digital_signing_certificate),
            ("sr:KeyAgreementCertificate", self.key_agreement_certificate),
            ("sr:KeyAgreementTopUpCertificate", self.key_agreement_top_up_certificate),
        ):
            if value is not None:
                _check_certificate(value, what)
        path = self.certification_path
        if not isinstance(path, tuple | list):
            raise DuisError(f"sr:CertificationPathCertificates must be a tuple, got {type(path).__name__}")
        if not 1 <= len(path) <= MAX_CERTIFICATION_PATH:
            raise DuisError(
                f"sr:CertificationPathCertificates must hold 1 to {MAX_CERTIFICATION_PATH} certificates, "
                f"got {len(path)}"
            )
        for i, certificate in enumerate(path, 1):
            _check_certificate(certificate, f"sr:CertificationPathCertificates/sr:Certificate[{i}]")
        object.__setattr__(self, "certification_path", tuple(path))
        if not isinstance(self.apply_time_based_cpv_checks, bool):
            raise DuisError("sr:ApplyTimeBasedCPVChecks must be a bool")
        if self.execution_date_time is not None:
            check_aware(self.execution_date_time, "sr:ExecutionDateTime")


@dataclass(frozen=True)
class SignedPreCommand:
    """Body sr:SignedPreCommand: the KRP-signed GBCS command (General-Signing APDU with its signature)."""

    gbcs_payload: bytes
    execution_date_time: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gbcs_payload, bytes) or not self.gbcs_payload:
            raise DuisError("sr:SignedPreCommand/sr:GBCSPayload must be non-empty bytes")
        if self.execution_date_time is not None:
            check_aware(self.execution_date_time, "sr:SignedPreCommand/sr:ExecutionDateTime")


RequestBody = UpdateSecurityCredentialsKrp | SignedPreCommand


def _check_service_reference(reference: object, variant: object) -> None:
    if not isinstance(reference, str) or not _SERVICE_REFERENCE.fullmatch(reference):
        raise DuisError(f"sr:ServiceReference {reference!r} is not of the form 6.15")
    if not isinstance(variant, str) or not _SERVICE_REFERENCE_VARIANT.fullmatch(variant):
        raise DuisError(f"sr:ServiceReferenceVariant {variant!r} is not of the form 6.15.1")


@dataclass(frozen=True)
class ServiceRequest:
    """sr:Request. command_variant: DUIS CommandVariant 1-9 (6 = command for local delivery returned)."""

    request_id: RequestId
    command_variant: int
    service_reference: str
    service_reference_variant: str
    body: RequestBody

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, RequestId):
            raise DuisError(f"sr:RequestID must be a RequestId, got {type(self.request_id).__name__}")
        if isinstance(self.command_variant, bool) or self.command_variant not in COMMAND_VARIANTS:
            raise DuisError(f"sr:CommandVariant {self.command_variant!r} is not 1 to 9")
        _check_service_reference(self.service_reference, self.service_reference_variant)
        if not isinstance(self.body, UpdateSecurityCredentialsKrp | SignedPreCommand):
            raise DuisError(
                f"sr:Body {type(self.body).__name__} is not UpdateSecurityCredentialsKrp or SignedPreCommand"
            )


@dataclass(frozen=True)
class LocalCommandResponse:
    """sr:Response whose sr:ResponseMessage carries sr:LocalCommand: the command for local delivery."""

    request_id: RequestId | None
    response_code: str
    response_date_time: datetime
    service_reference: str
    service_reference_variant: str
    gbcs_payload: bytes

    def __post_init__(self) -> None:
        if self.request_id is not None and not isinstance(self.request_id, RequestId):
            raise DuisError(f"sr:RequestID must be a RequestId, got {type(self.request_id).__name__}")
        if self.response_code not in RESPONSE_CODES:
            raise DuisError(
                f"sr:ResponseCode {self.response_code!r} is not one of {', '.join(RESPONSE_CODES)}"
            )
        check_aware(self.response_date_time, "sr:ResponseDateTime")
        _check_service_reference(self.service_reference, self.service_reference_variant)
        if not isinstance(self.gbcs_payload, bytes) or not self.gbcs_payload:
            raise DuisError("sr:LocalCommand/sr:GBCSPayload must be non-empty bytes")


# --- requests -----------------------------------------------------------------------------------


def encode_request(request: ServiceRequest) -> bytes:
    """The sr:Request document (no ds:Signature)."""
    root = new_root("Request")
    header = add(root, "Header")
    add(header, "RequestID", str(request.request_id))
    add(header, "CommandVariant", str(request.command_variant))
    add(header, "ServiceReference", request.service_reference)
    add(header, "ServiceReferenceVariant", request.service_reference_variant)
    body = add(root, "Body")
    if isinstance(request.body, UpdateSecurityCredentialsKrp):
        _encode_krp(add(body, "UpdateSecurityCredentialsKRP"), request.body)
    else:
        element = add(body, "SignedPreCommand")
        if request.body.execution_date_time is not None:
            add(
                element,
                "ExecutionDateTime",
                date_time_text(request.body.execution_date_time, "sr:ExecutionDateTime"),
            )
        add(element, "GBCSPayload", base64_text(request.body.gbcs_payload))
    return serialise(root)


def _encode_krp(element: ET.Element, krp: UpdateSecurityCredentialsKrp) -> None:
    # FutureDatedAbstractType: ExecutionDateTime comes first.
    if krp.execution_date_time is not None:
        add(element, "ExecutionDateTime", date_time_text(krp.execution_date_time, "sr:ExecutionDateTime"))
    add(element, "RemotePartyRole", krp.remote_party_role)
    if krp.floor_seq_number is not None:
        add(element, "RemotePartyFloorSeqNumber", str(krp.floor_seq_number))
    if krp.prepayment_top_up_floor_seq_number is not None:
        add(element, "RemotePartyPrepaymentTopUpFloorSeqNumber", str(krp.prepayment_top_up_floor_seq_number))
    certificates = add(add(element, "ReplacementCertificates"), "SupplierOrNetworkOperatorCertificates")
    for name, value in (
        ("DigitalSigningCertificate", krp.digital_signing_certificate),
        ("KeyAgreementCertificate", krp.key_agreement_certificate),
        ("KeyAgreementTopUpCertificate", krp.key_agreement_top_up_certificate),
    ):
        if value is not None:
            add(certificates, name, base64_text(value))
    path = add(element, "CertificationPathCertificates")
    for certificate in krp.certification_path:
        add(path, "Certificate", base64_text(certificate))
    add(element, "ApplyTimeBasedCPVChecks", "true" if krp.apply_time_based_cpv_checks else "false")


def decode_request(data: bytes) -> ServiceRequest:
    """Parse an sr:Request holding sr:UpdateSecurityCredentialsKRP or sr:SignedPreCommand. DuisError
    naming the element otherwise (other bodies, optional header fields we do not model, bad values)."""
    root = parse_document(data, "Request")
    top = Children(root, "sr:Request")
    header = Children(top.required("Header"), "sr:Header")
    request_id = RequestId.parse(leaf_text(header.required("RequestID"), "sr:RequestID"))
    for unsupported in ("FirstInSequence", "PrecedingServiceRequestID"):
        if header.optional(unsupported) is not None:
            raise DuisError(f"sr:Header/sr:{unsupported} is not supported (requests in a sequence)")
    command_variant = read_int(header.required("CommandVariant"), "sr:CommandVariant", 1, 9)
    service_reference = leaf_text(header.required("ServiceReference"), "sr:ServiceReference")
    variant = leaf_text(header.required("ServiceReferenceVariant"), "sr:ServiceReferenceVariant")
    header.done()
    body_children = Children(top.required("Body"), "sr:Body")
    body: RequestBody
    if (krp := body_children.optional("UpdateSecurityCredentialsKRP")) is not None:
        body = _decode_krp(krp)
    elif (signed := body_children.optional("SignedPreCommand")) is not None:
        body = _decode_signed_pre_command(signed)
    else:
        found = body_children.next_name() or "nothing"
        raise DuisError(
            f"sr:Body holds {found}; only sr:UpdateSecurityCredentialsKRP and sr:SignedPreCommand "
            "are supported"
        )
    body_children.done()
    top.optional("Signature", DS_NS)  # enveloped signature: accepted, not checked
    top.done()
    return ServiceRequest(request_id, command_variant, service_reference, variant, body)


def _decode_krp(element: ET.Element) -> UpdateSecurityCredentialsKrp:
    items = Children(element, _KRP)
    execution = items.optional("ExecutionDateTime")
    role = leaf_text(items.required("RemotePartyRole"), f"{_KRP}/sr:RemotePartyRole")
    floor = items.optional("RemotePartyFloorSeqNumber")
    top_up_floor = items.optional("RemotePartyPrepaymentTopUpFloorSeqNumber")
    replacements = Children(items.required("ReplacementCertificates"), f"{_KRP}/sr:ReplacementCertificates")
    certificates = Children(replacements.required("SupplierOrNetworkOperatorCertificates"), _CERTS)
    replacements.done()
    found: dict[str, bytes | None] = {}
    for name in ("DigitalSigningCertificate", "KeyAgreementCertificate", "KeyAgreementTopUpCertificate"):
        item = certificates.optional(name)
        found[name] = None if item is None else read_base64(item, f"{_CERTS}/sr:{name}")
    certificates.done()
    path_items = Children(items.required("CertificationPathCertificates"), _PATH)
    path = tuple(
        read_base64(item, f"{_PATH}/sr:Certificate[{i}]")
        for i, item in enumerate(path_items.repeated("Certificate", 1, MAX_CERTIFICATION_PATH), 1)
    )
    path_items.done()
    apply = read_bool(items.required("ApplyTimeBasedCPVChecks"), f"{_KRP}/sr:ApplyTimeBasedCPVChecks")
    items.done()
    return UpdateSecurityCredentialsKrp(
        remote_party_role=role,
        floor_seq_number=_floor(floor, f"{_KRP}/sr:RemotePartyFloorSeqNumber"),
        digital_signing_certificate=found["DigitalSigningCertificate"],
        key_agreement_certificate=found["KeyAgreementCertificate"],
        certification_path=path,
        apply_time_based_cpv_checks=apply,
        execution_date_time=_optional_date_time(execution, f"{_KRP}/sr:ExecutionDateTime"),
        prepayment_top_up_floor_seq_number=_floor(
            top_up_floor, f"{_KRP}/sr:RemotePartyPrepaymentTopUpFloorSeqNumber"
        ),
        key_agreement_top_up_certificate=found["KeyAgreementTopUpCertificate"],
    )


def _floor(element: ET.Element | None, path: str) -> int | None:
    return None if element is None else read_int(element, path, 0, MAX_FLOOR_SEQ_NUMBER)


def _optional_date_time(element: ET.Element | None, path: str) -> datetime | None:
    return None if element is None else read_date_time(element, path)


def _decode_signed_pre_command(element: ET.Element) -> SignedPreCommand:
    what = "sr:SignedPreCommand"
    items = Children(element, what)
    execution = items.optional("ExecutionDateTime")
    payload = read_base64(items.required("GBCSPayload"), f"{what}/sr:GBCSPayload")
    items.done()
    return SignedPreCommand(payload, _optional_date_time(execution, f"{what}/sr:ExecutionDateTime"))


# --- responses ----------------------------------------------------------------------------------


def encode_local_command_response(response: LocalCommandResponse) -> bytes:
    """The sr:Response document carrying sr:LocalCommand (no ds:Signature)."""
    root = new_root("Response")
    header = add(root, "Header")
    if response.request_id is not None:
        add(header, "RequestID", str(response.request_id))
    add(header, "ResponseCode", response.response_code)
    add(header, "ResponseDateTime", date_time_text(response.response_date_time, "sr:ResponseDateTime"))
    message = add(add(root, "Body"), "ResponseMessage")
    add(message, "ServiceReference", response.service_reference)
    add(message, "ServiceReferenceVariant", response.service_reference_variant)
    add(add(message, "LocalCommand"), "GBCSPayload", base64_text(response.gbcs_payload))
    return serialise(root)


def decode_local_command_response(data: bytes) -> LocalCommandResponse:
    """Parse an sr:Response carrying sr:LocalCommand. ResponseCodeError when the ResponseCode is not I0;
    DuisError naming what is missing for any other response (e.g. one carrying sr:PreCommand) or a request."""
    root = parse_document(data, "Response")
    top = Children(root, "sr:Response")
    header = Children(top.required("Header"), "sr:Header")
    request_element = header.optional("RequestID")
    request_id = (
        None if request_element is None else RequestId.parse(leaf_text(request_element, "sr:RequestID"))
    )
    header.optional("ResponseID")  # DCC's own id for the response: not needed
    code = leaf_text(header.required("ResponseCode"), "sr:ResponseCode")
    if code != SUCCESS:
        about = f" to {request_id}" if request_id is not None else ""
        raise ResponseCodeError(
            code, f"DUIS response{about} has sr:ResponseCode {code}, not {SUCCESS} (success)"
        )
    when = read_date_time(header.required("ResponseDateTime"), "sr:ResponseDateTime")
    header.done()
    body = Children(top.required("Body"), "sr:Body")
    message = Children(body.required("ResponseMessage"), "sr:ResponseMessage")
    body.done()
    reference = leaf_text(message.required("ServiceReference"), "sr:ServiceReference")
    variant = leaf_text(message.required("ServiceReferenceVariant"), "sr:ServiceReferenceVariant")
    local = message.optional("LocalCommand")
    if local is None:
        found = message.next_name()
        holds = f"holds {found}" if found is not None else "holds nothing after sr:ServiceReferenceVariant"
        raise DuisError(f"sr:ResponseMessage {holds}, not sr:LocalCommand")
    message.done()
    local_items = Children(local, "sr:LocalCommand")
    payload = read_base64(local_items.required("GBCSPayload"), "sr:LocalCommand/sr:GBCSPayload")
    local_items.done()
    top.optional("Signature", DS_NS)  # enveloped signature: accepted, not checked
    top.done()
    return LocalCommandResponse(request_id, code, when, reference, variant, payload)
