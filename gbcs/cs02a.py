"""CS02a Provide Security Credentials Details (README §8.3)."""

from __future__ import annotations

from dataclasses import dataclass

from gbcs.cells import TrustAnchorCellIdentifier


@dataclass(frozen=True)
class ProvideSecurityCredentialsCommand:
    ta_cell: TrustAnchorCellIdentifier  # authorisingRemotePartyTACellIdentifier
    roles: tuple[int, ...]  # remotePartyRolesCredentialsRequired

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> ProvideSecurityCredentialsCommand:
        raise NotImplementedError


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
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> ProvideSecurityCredentialsResponse:
        raise NotImplementedError
