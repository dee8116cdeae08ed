"""Builders shared by the bench-client and simulator tests: lab organisation certificates and signed CS02b
commands (gbcs/README.md §9), made with labpki and gbcs's public API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.gbcs.cells import NO_DS_CELL, TrustAnchorCellIdentifier
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    RemotePartySeqNumberChange,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
)
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader
from vdno.gbcs.signature import sign_apdu
from vdno.labpki.smki import CertifiedKey, KeyUsageName, issue_organisation_certificate, new_p256_key


def der(cert: x509.Certificate) -> bytes:
    return bytes(cert.public_bytes(Encoding.DER))


def org(
    issuer: CertifiedKey,
    entity: bytes,
    role: int,
    usage: KeyUsageName,
    now: datetime | None = None,
    years: int = 10,
) -> CertifiedKey:
    """A fresh P-256 key and its organisation certificate (entity id, role, one key usage) under issuer."""
    key = new_p256_key()
    cert = issue_organisation_certificate(issuer, key.public_key(), entity, role, usage, now=now, years=years)
    return CertifiedKey(cert, key)


def cs02b_command(
    signer_key: ec.EllipticCurvePrivateKey,
    originator: bytes,
    device_id: bytes,
    counter: int,
    replacements: Sequence[TrustAnchorReplacement],
    path: Sequence[bytes],
    *,
    mode: int = 3,
    message_code: int | None = None,
    ta_cell: TrustAnchorCellIdentifier | None = NO_DS_CELL,
    seq: int | None = None,
    floor: int | None = 0,
    other_changes: tuple[RemotePartySeqNumberChange, ...] | None = None,
    disapply_time: bool = False,
) -> GeneralSigningApdu:
    """A GS-only CS02b command signed with signer_key. The message code is 0x0100 + mode unless given;
    authorisingRemotePartySeqNumber is the Originator Counter unless seq is given."""
    command = UpdateSecurityCredentialsCommand(
        AuthorisingRemotePartyControl(
            mode=mode,
            seq_number=counter if seq is None else seq,
            ta_cell=ta_cell,
            apply_time_based_cpv_checks=1 if disapply_time else None,
            floor_seq_number=floor,
            other_seq_number_changes=other_changes,
        ),
        tuple(replacements),
        tuple(path),
    )
    header = GroupingHeader(
        cra=Cra.COMMAND,
        originator_counter=counter,
        business_originator_id=originator,
        business_target_id=device_id,
        message_code=0x0100 + mode if message_code is None else message_code,
    )
    return sign_apdu(GeneralSigningApdu(header, command.encode()), signer_key)
