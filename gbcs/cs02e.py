"""CS02e Provide Device Certificate (command: SEQUENCE { keyUsage }) and CS02d Update Device Certificate."""

from __future__ import annotations

from dataclasses import dataclass

from vdno.gbcs import ber
from vdno.gbcs.cells import KeyUsage, decode_key_usage, encode_key_usage
from vdno.gbcs.errors import DecodeError, EncodeError


@dataclass(frozen=True)
class ProvideDeviceCertificateCommand:
    key_usage: KeyUsage

    def encode(self) -> bytes:
        return ber.sequence(encode_key_usage(self.key_usage))

    @classmethod
    def decode(cls, data: bytes) -> ProvideDeviceCertificateCommand:
        what = "CS02e command"
        reader = ber.read_sequence(data, what)
        key_usage = decode_key_usage(reader.next(ber.TAG_BIT_STRING, "keyUsage"), f"{what}.keyUsage")
        reader.done()
        return cls(key_usage)


@dataclass(frozen=True)
class DeviceCertificateResponse:
    """Either the device certificate (DER) or an INTEGER response code."""

    certificate: bytes | None = None
    response_code: int | None = None

    def encode(self) -> bytes:
        if (self.certificate is None) == (self.response_code is None):
            raise EncodeError("CS02e response needs exactly one of certificate or response_code")
        if self.certificate is not None:
            return ber.check_der_element(self.certificate, "CS02e response certificate")
        assert self.response_code is not None
        return ber.der_int(self.response_code)

    @classmethod
    def decode(cls, data: bytes) -> DeviceCertificateResponse:
        what = "CS02e response"
        item = ber.read_single(data, what)
        if item.tag == ber.TAG_SEQUENCE:
            return cls(certificate=item.raw)
        if item.tag == ber.TAG_INTEGER:
            return cls(response_code=ber.decode_int(item, f"{what}.responseCode"))
        raise DecodeError(
            f"{what}: expected Certificate (30) or INTEGER (02), got {item.tag:#04x} at offset 0"
        )


@dataclass(frozen=True)
class UpdateDeviceCertificateCommand:
    """CS02d command: a bare device Certificate."""

    certificate: bytes

    def encode(self) -> bytes:
        return ber.check_der_element(self.certificate, "CS02d certificate")

    @classmethod
    def decode(cls, data: bytes) -> UpdateDeviceCertificateCommand:
        return cls(ber.read_single(data, "CS02d command Certificate", ber.TAG_SEQUENCE).raw)


@dataclass(frozen=True)
class UpdateDeviceCertificateResponse:
    response_code: int

    def encode(self) -> bytes:
        return ber.der_int(self.response_code)

    @classmethod
    def decode(cls, data: bytes) -> UpdateDeviceCertificateResponse:
        what = "CS02d response"
        return cls(ber.decode_int(ber.read_single(data, what, ber.TAG_INTEGER), f"{what}.responseCode"))
