"""CS02a Provide Security Credentials Details (gbcs/README.md §8.3)."""

from __future__ import annotations

from dataclasses import dataclass

from vdno.gbcs import ber
from vdno.gbcs.cells import CellUsage, TrustAnchorCellIdentifier, decode_key_usage, encode_key_usage


@dataclass(frozen=True)
class ProvideSecurityCredentialsCommand:
    ta_cell: TrustAnchorCellIdentifier  # authorisingRemotePartyTACellIdentifier
    roles: tuple[int, ...]  # remotePartyRolesCredentialsRequired

    def encode(self) -> bytes:
        return ber.sequence(self.ta_cell.encode(), ber.sequence(*(ber.der_int(r) for r in self.roles)))

    @classmethod
    def decode(cls, data: bytes) -> ProvideSecurityCredentialsCommand:
        what = "CS02a command"
        reader = ber.read_sequence(data, what)
        cell = TrustAnchorCellIdentifier.decode_tlv(
            reader.next(ber.TAG_SEQUENCE, "authorisingRemotePartyTACellIdentifier"),
            f"{what}.authorisingRemotePartyTACellIdentifier",
        )
        roles_tlv = reader.next(ber.TAG_SEQUENCE, "remotePartyRolesCredentialsRequired")
        reader.done()
        roles = ber.read_sequence_of(
            roles_tlv, f"{what}.remotePartyRolesCredentialsRequired", ber.TAG_INTEGER
        )
        return cls(cell, tuple(ber.decode_int(item, f"{what}.role") for item in roles))


@dataclass(frozen=True)
class TrustAnchorCellDetails:
    key_usage: int  # gbcs.cells.KeyUsage
    cell_usage: int
    subject_unique_id: bytes
    subject_key_identifier: bytes


@dataclass(frozen=True)
class RoleCredentials:
    role: int
    status: int
    current_seq_number: int | None
    cells: tuple[TrustAnchorCellDetails, ...] | None


@dataclass(frozen=True)
class ProvideSecurityCredentialsResponse:
    roles: tuple[RoleCredentials, ...]

    def encode(self) -> bytes:
        return ber.sequence(*(_encode_role(r) for r in self.roles))

    @classmethod
    def decode(cls, data: bytes) -> ProvideSecurityCredentialsResponse:
        what = "CS02a response"
        outer = ber.read_single(data, what, ber.TAG_SEQUENCE)
        roles = ber.read_sequence_of(outer, f"{what}.roles", ber.TAG_SEQUENCE)
        return cls(tuple(_decode_role(item) for item in roles))

    @classmethod
    def decode_roles_of(cls, data: bytes, role: int) -> ProvideSecurityCredentialsResponse:
        """The response's entries for one remote party role, in order, each decoded fully; the outer
        structure is checked as decode() checks it, the other roles' entries only as far as their
        remotePartyRole. DecodeError as decode() gives for anything it reads."""
        what = "CS02a response"
        outer = ber.read_single(data, what, ber.TAG_SEQUENCE)
        roles = ber.read_sequence_of(outer, f"{what}.roles", ber.TAG_SEQUENCE)
        entries = []
        for item in roles:
            named = _role_of(item)
            if named is None or named == role:  # None: the full decode raises the DecodeError
                entries.append(_decode_role(item))
        return cls(tuple(entries))


def _encode_role(role: RoleCredentials) -> bytes:
    parts = [ber.der_int(role.role), ber.der_int(role.status, ber.TAG_ENUMERATED)]
    if role.current_seq_number is not None:
        parts.append(ber.der_int(role.current_seq_number))
    if role.cells is not None:
        parts.append(ber.sequence(*(_encode_cell(c) for c in role.cells)))
    return ber.sequence(*parts)


def _encode_cell(cell: TrustAnchorCellDetails) -> bytes:
    parts = [encode_key_usage(cell.key_usage)]
    if cell.cell_usage != CellUsage.MANAGEMENT:
        parts.append(ber.der_int(cell.cell_usage))
    parts.append(ber.tlv(ber.TAG_OCTET_STRING, bytes(cell.subject_unique_id)))
    parts.append(ber.tlv(ber.TAG_OCTET_STRING, bytes(cell.subject_key_identifier)))
    return ber.sequence(*parts)


def _decode_role(item: ber.Tlv) -> RoleCredentials:
    what = "CS02a role credentials"
    reader = ber.SeqReader(item, what)
    role = ber.decode_int(reader.next(ber.TAG_INTEGER, "remotePartyRole"), f"{what}.remotePartyRole")
    status = ber.decode_int(
        reader.next((ber.TAG_ENUMERATED, ber.TAG_INTEGER), "statusCode"), f"{what}.statusCode"
    )
    seq_tlv = reader.optional(ber.TAG_INTEGER, "currentSeqNumber")
    cells_tlv = reader.optional(ber.TAG_SEQUENCE, "trustAnchorCellDetails")
    reader.done()
    cells = None
    if cells_tlv is not None:
        details = ber.read_sequence_of(cells_tlv, f"{what}.trustAnchorCellDetails", ber.TAG_SEQUENCE)
        cells = tuple(_decode_cell(c) for c in details)
    return RoleCredentials(
        role, status, None if seq_tlv is None else ber.decode_int(seq_tlv, f"{what}.currentSeqNumber"), cells
    )


def _role_of(item: ber.Tlv) -> int | None:
    """The remotePartyRole a role-credentials entry opens with, or None if it opens with another element
    (its full decode then names the error)."""
    if not item.content:
        return None
    first, _ = ber.read_tlv(item.content, 0, "CS02a role credentials", item.content_offset)
    if first.tag != ber.TAG_INTEGER:
        return None
    return ber.decode_int(first, "CS02a role credentials.remotePartyRole")


def _decode_cell(item: ber.Tlv) -> TrustAnchorCellDetails:
    what = "CS02a trustAnchorCellDetails"
    reader = ber.SeqReader(item, what)
    key_usage = decode_key_usage(reader.next(ber.TAG_BIT_STRING, "keyUsage"), f"{what}.keyUsage")
    usage_tlv = reader.optional(ber.TAG_INTEGER, "cellUsage")
    uid = reader.next(ber.TAG_OCTET_STRING, "subjectUniqueID").content
    ski = reader.next(ber.TAG_OCTET_STRING, "subjectKeyIdentifier").content
    reader.done()
    usage = CellUsage.MANAGEMENT if usage_tlv is None else ber.decode_int(usage_tlv, f"{what}.cellUsage")
    return TrustAnchorCellDetails(int(key_usage), usage, uid, ski)
