"""Name every field of a decoded CS02a/b/d/e message (gbcs/README.md §4, §8) as a JSON-ready document."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vdno.gbcs.cells import TrustAnchorCellIdentifier
from vdno.gbcs.cs02a import (
    ProvideSecurityCredentialsCommand,
    ProvideSecurityCredentialsResponse,
    RoleCredentials,
    TrustAnchorCellDetails,
)
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    ExecutionOutcome,
    FutureDatedAlert,
    RemotePartySeqNumberChange,
    SpecialistSeqNumber,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import (
    DeviceCertificateResponse,
    ProvideDeviceCertificateCommand,
    UpdateDeviceCertificateCommand,
    UpdateDeviceCertificateResponse,
)
from vdno.gbcs.errors import CertificateError
from vdno.gbcs.framing import GbcsMessage, GroupingHeader
from vdno.gbcs.message import DecodedMessage, Payload
from vdno.gbcs.smki import load_certificate

ROLE_NAMES = {
    0: "root",
    1: "recovery",
    2: "supplier",
    3: "networkOperator",
    4: "accessControlBroker",
    5: "transitionalCoS",
    6: "wanProvider",
    7: "issuingAuthority",
    8: "loadController",
    127: "other",
}
MODE_NAMES = {
    0: "rootBySupplier",
    1: "rootByWanProvider",
    2: "supplierBySupplier",
    3: "networkOperatorByNetworkOperator",
    4: "accessControlBrokerByACB",
    5: "wanProviderByWanProvider",
    6: "transCoSByTransCoS",
    7: "supplierByTransCoS",
    8: "anyExceptAbnormalRootByRecovery",
    9: "anyByContingency",
}
STATUS_NAMES = {
    0: "success",
    1: "decodeError",
    2: "badContentType",
    3: "badSignature",
    4: "insufficientPermission",
    5: "badCertificate",
    8: "badSequenceNumber",
    10: "noTrustAnchor",
    17: "insufficientMemory",
    25: "trustAnchorNotFound",
    30: "resourcesBusy",
    127: "other",
}
KEY_USAGE_NAMES = {0: "digitalSignature", 4: "keyAgreement", 5: "keyCertSign"}
CELL_USAGE_NAMES = {0: "management", 1: "prePaymentTopUp"}
SEQ_NUMBER_USAGE_NAMES = {0: "prepaymentTopUp"}
CRA_NAMES = {1: "command", 2: "response", 3: "alert"}
ALERT_NAMES = {0x8F66: "futureDatedExecutionSuccess", 0x8F67: "futureDatedExecutionFailure"}
CPV_NAMES = {0: "apply", 1: "disapply"}
CS02D_RESPONSE_NAMES = {0: "success"}


def message_code_name(code: int) -> str:
    if 0x0100 <= code <= 0x0109:
        return f"CS02b {MODE_NAMES[code - 0x0100]}"
    return {
        0x0008: "CS02a Provide Security Credentials Details",
        0x000B: "CS02d Update Device Certificate on Device",
        0x000C: "CS02e Provide Device Certificate from Device",
        0x00CB: "CS02b future-dated execution alert",
    }.get(code, "unknown")


def enum(value: int, names: dict[int, str]) -> dict[str, Any]:
    return {"value": int(value), "name": names.get(int(value), "unknown")}


def dlms_date_time(raw: bytes) -> dict[str, Any]:
    """12-byte DLMS date-time -> {raw, iso} (fields FF/8000 = unspecified)."""
    year = int.from_bytes(raw[0:2], "big")
    month, day, _dow, hour, minute, second, hundredths = raw[2:9]
    deviation = int.from_bytes(raw[9:11], "big", signed=True)
    iso = None
    try:
        iso = datetime(year, month, day, hour, minute, second, (hundredths % 100) * 10000).isoformat()
    except ValueError:
        iso = None
    return {
        "raw": raw.hex(),
        "iso": iso,
        "deviation": None if raw[9:11] == b"\x80\x00" else deviation,
        "clockStatus": raw[11],
    }


def header_document(header: GroupingHeader) -> dict[str, Any]:
    return {
        "craFlag": enum(int(header.cra), CRA_NAMES),
        "originatorCounter": header.originator_counter,
        "businessOriginatorId": header.business_originator_id.hex(),
        "businessTargetId": header.business_target_id.hex(),
        "dateTime": None if header.date_time is None else dlms_date_time(header.date_time),
        "messageCode": {
            "value": f"0x{header.message_code:04X}",
            "name": message_code_name(header.message_code),
        },
        "supplementaryOtherInformation": header.supplementary.hex() if header.supplementary else None,
    }


def frame_document(message: GbcsMessage) -> dict[str, Any]:
    apdu = message.apdu
    signature = apdu.signature
    doc: dict[str, Any] = {
        "macHeader": None,
        "generalSigningTag": "0xDF",
        "contentLength": len(apdu.content),
        "signatureLength": None if signature is None else len(signature),
        "signature": signature.hex() if signature else None,
        "signedRangeLength": len(message.signed_range),
        "signedRangeSha256": hashlib.sha256(message.signed_range).hexdigest(),
    }
    if message.mac is not None:
        doc["macHeader"] = {
            "generalCipheringTag": "0xDD",
            "securityControl": "0x11 (authentication only)",
            "invocationCounter": message.invocation_counter,
            "acbSmdMac": message.mac.hex(),
        }
    return doc


def certificate_summary(der: bytes) -> dict[str, Any]:
    """Subject entity id, role, key usage, SKI, validity, issuer, serial; plus the DER as hex."""
    try:
        smki = load_certificate(der)
    except CertificateError as exc:
        return _plain_certificate_summary(der, str(exc))
    cert = smki.certificate
    kind = "device" if smki.is_device else "ca" if smki.is_ca else "organisation"
    return {
        "kind": kind,
        "subject": cert.subject.rfc4514_string(),
        "subjectEntityId": smki.entity_id.hex() if smki.entity_id else None,
        "role": None if smki.role is None else enum(smki.role, ROLE_NAMES),
        "keyUsage": None if smki.key_usage is None else KEY_USAGE_NAMES[int(smki.key_usage)],
        "subjectKeyIdentifier": smki.subject_key_identifier.hex(),
        "issuer": cert.issuer.rfc4514_string(),
        "serialNumber": f"{cert.serial_number:x}",
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
        "der": bytes(der).hex(),
    }


def _plain_certificate_summary(der: bytes, problem: str) -> dict[str, Any]:
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except ValueError as exc:
        return {"kind": "unparseable", "problem": f"{problem}; {exc}", "der": bytes(der).hex()}
    return {
        "kind": "non-SMKI",
        "problem": problem,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serialNumber": f"{cert.serial_number:x}",
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
        "der": cert.public_bytes(serialization.Encoding.DER).hex(),
    }


def cell_document(cell: TrustAnchorCellIdentifier) -> dict[str, Any]:
    return {
        "remotePartyRole": enum(cell.role, ROLE_NAMES),
        "keyUsage": KEY_USAGE_NAMES.get(int(cell.key_usage), "unknown"),
        "cellUsage": enum(cell.cell_usage, CELL_USAGE_NAMES),
    }


def _specialist(items: tuple[SpecialistSeqNumber, ...] | None) -> list[dict[str, Any]] | None:
    if items is None:
        return None
    return [
        {"seqNumberUsage": enum(i.seq_number_usage, SEQ_NUMBER_USAGE_NAMES), "seqNumber": i.seq_number}
        for i in items
    ]


def _changes(items: tuple[RemotePartySeqNumberChange, ...] | None) -> list[dict[str, Any]] | None:
    if items is None:
        return None
    return [
        {
            "remotePartyRole": enum(c.role, ROLE_NAMES),
            "floorSeqNumber": c.floor_seq_number,
            "specialistFloorSeqNumbers": _specialist(c.specialist_floor_seq_numbers),
        }
        for c in items
    ]


def _control(control: AuthorisingRemotePartyControl) -> dict[str, Any]:
    key = control.plaintext_symmetric_key
    cpv = control.apply_time_based_cpv_checks
    return {
        "credentialsReplacementMode": enum(control.mode, MODE_NAMES),
        "plaintextSymmetricKey": None if key is None else key.hex(),
        "applyTimeBasedCPVChecks": None if cpv is None else enum(cpv, CPV_NAMES),
        "authorisingRemotePartyTACellIdentifier": (
            None if control.ta_cell is None else cell_document(control.ta_cell)
        ),
        "authorisingRemotePartySeqNumber": control.seq_number,
        "newRemotePartyFloorSeqNumber": control.floor_seq_number,
        "newRemotePartySpecialistFloorSeqNumber": _specialist(control.specialist_floor_seq_numbers),
        "otherRemotePartySeqNumberChanges": _changes(control.other_seq_number_changes),
    }


def _outcome(outcome: ExecutionOutcome) -> dict[str, Any]:
    return {
        "authorisingRemotePartySeqNumber": outcome.seq_number,
        "credentialsReplacementMode": enum(outcome.mode, MODE_NAMES),
        "remotePartySeqNumberChanges": _changes(outcome.seq_number_changes),
        "replacementOutcomes": [
            {
                "affectedTrustAnchorCell": cell_document(o.cell),
                "statusCode": enum(o.status, STATUS_NAMES),
                "existingSubjectUniqueID": o.existing_subject_unique_id.hex(),
                "existingSubjectKeyIdentifier": o.existing_subject_key_identifier.hex(),
                "replacingSubjectUniqueID": o.replacing_subject_unique_id.hex(),
                "replacingSubjectKeyIdentifier": o.replacing_subject_key_identifier.hex(),
            }
            for o in outcome.replacement_outcomes
        ],
    }


def _role_credentials(role: RoleCredentials) -> dict[str, Any]:
    def cell(c: TrustAnchorCellDetails) -> dict[str, Any]:
        return {
            "keyUsage": KEY_USAGE_NAMES.get(int(c.key_usage), "unknown"),
            "cellUsage": enum(c.cell_usage, CELL_USAGE_NAMES),
            "subjectUniqueID": c.subject_unique_id.hex(),
            "subjectKeyIdentifier": c.subject_key_identifier.hex(),
        }

    return {
        "remotePartyRole": enum(role.role, ROLE_NAMES),
        "statusCode": enum(role.status, STATUS_NAMES),
        "currentSeqNumber": role.current_seq_number,
        "trustAnchorCellDetails": None if role.cells is None else [cell(c) for c in role.cells],
    }


def payload_document(payload: Payload) -> tuple[str, dict[str, Any]]:
    """(payload type name, named fields)."""
    if isinstance(payload, UpdateSecurityCredentialsCommand):
        when = payload.execution_date_time
        return "CS02b CommandPayload", {
            "authorisingRemotePartyControl": _control(payload.control),
            "replacements": [
                {
                    "replacementCertificate": certificate_summary(r.certificate),
                    "targetTrustAnchorCell": cell_document(r.target),
                }
                for r in payload.replacements
            ],
            "certificationPathCertificates": [
                certificate_summary(c) for c in payload.certification_path_certificates
            ],
            "executionDateTime": None if when is None else when.isoformat(),
        }
    if isinstance(payload, UpdateSecurityCredentialsResponse):
        outcome = payload.execution_outcome
        return "CS02b ResponsePayload", {
            "commandAccepted": True,
            "executionOutcome": None if outcome is None else _outcome(outcome),
        }
    if isinstance(payload, FutureDatedAlert):
        return "CS02b AlertPayload", {
            "alertCode": {
                "value": f"0x{payload.alert_code:04X}",
                "name": ALERT_NAMES.get(payload.alert_code, "unknown"),
            },
            "executionDateTime": payload.execution_date_time.isoformat(),
            "executionOutcome": _outcome(payload.execution_outcome),
        }
    if isinstance(payload, ProvideSecurityCredentialsCommand):
        return "CS02a command", {
            "authorisingRemotePartyTACellIdentifier": cell_document(payload.ta_cell),
            "remotePartyRolesCredentialsRequired": [enum(r, ROLE_NAMES) for r in payload.roles],
        }
    if isinstance(payload, ProvideSecurityCredentialsResponse):
        return "CS02a response", {"remotePartyCredentials": [_role_credentials(r) for r in payload.roles]}
    if isinstance(payload, UpdateDeviceCertificateCommand):
        return "CS02d command", {"certificate": certificate_summary(payload.certificate)}
    if isinstance(payload, UpdateDeviceCertificateResponse):
        return "CS02d response", {"responseCode": enum(payload.response_code, CS02D_RESPONSE_NAMES)}
    if isinstance(payload, ProvideDeviceCertificateCommand):
        return "CS02e command", {"keyUsage": KEY_USAGE_NAMES.get(int(payload.key_usage), "unknown")}
    if isinstance(payload, DeviceCertificateResponse):
        if payload.certificate is not None:
            return "CS02e response", {"certificate": certificate_summary(payload.certificate)}
        assert payload.response_code is not None
        return "CS02e response", {"responseCode": enum(payload.response_code, CS02D_RESPONSE_NAMES)}
    raise TypeError(f"unknown payload type {type(payload).__name__}")  # pragma: no cover


def message_document(decoded: DecodedMessage) -> dict[str, Any]:
    """frame, groupingHeader and payload of a decoded message."""
    message = decoded.message
    payload_type, payload = payload_document(decoded.payload)
    kind = "pre-command" if decoded.is_precommand else CRA_NAMES[int(message.apdu.header.cra)]
    return {
        "kind": kind,
        "frame": frame_document(message),
        "groupingHeader": header_document(message.apdu.header),
        "payloadType": payload_type,
        "payload": payload,
    }
