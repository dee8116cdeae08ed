"""CS02e Provide Device Certificate (command: SEQUENCE { keyUsage }) and CS02d Update Device Certificate."""

from __future__ import annotations

from dataclasses import dataclass

from gbcs.cells import KeyUsage


@dataclass(frozen=True)
class ProvideDeviceCertificateCommand:
    key_usage: KeyUsage

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> ProvideDeviceCertificateCommand:
        raise NotImplementedError


@dataclass(frozen=True)
class DeviceCertificateResponse:
    """Either the device certificate (DER) or an INTEGER response code."""

    certificate: bytes | None = None
    response_code: int | None = None

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> DeviceCertificateResponse:
        raise NotImplementedError


@dataclass(frozen=True)
class UpdateDeviceCertificateCommand:
    """CS02d command: a bare device Certificate."""

    certificate: bytes

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> UpdateDeviceCertificateCommand:
        raise NotImplementedError


@dataclass(frozen=True)
class UpdateDeviceCertificateResponse:
    response_code: int

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> UpdateDeviceCertificateResponse:
        raise NotImplementedError
