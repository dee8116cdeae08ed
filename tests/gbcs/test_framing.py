from __future__ import annotations

import pytest

from vdno.gbcs import ber
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, KeyUsage, TrustAnchorCellIdentifier
from vdno.gbcs.cs02a import (
    ProvideSecurityCredentialsCommand,
    ProvideSecurityCredentialsResponse,
    RoleCredentials,
    TrustAnchorCellDetails,
)
from vdno.gbcs.cs02e import ProvideDeviceCertificateCommand
from vdno.gbcs.errors import DecodeError, EncodeError
from vdno.gbcs.framing import (
    Cra,
    GeneralSigningApdu,
    GroupingHeader,
    decode_apdu,
    decode_message,
    encode_length,
    encode_mac_framed,
    encode_signed_apdu,
    read_length,
)
from vdno.gbcs.ids import check_eui64, eui64_hex, parse_eui64

NO = bytes.fromhex("90B3D51F30020000")
ESME = bytes.fromhex("00DB1234567890A0")


def test_encode_length_forms() -> None:
    assert encode_length(0) == b"\x00"
    assert encode_length(0x7F) == b"\x7f"
    assert encode_length(0x80) == b"\x81\x80"
    assert encode_length(0xFF) == b"\x81\xff"
    assert encode_length(1292) == bytes.fromhex("82050C")
    assert encode_length(0xFFFF) == b"\x82\xff\xff"
    for bad in (-1, 0x10000):
        with pytest.raises(EncodeError):
            encode_length(bad)


def test_read_length() -> None:
    assert read_length(bytes.fromhex("0082050C"), 1) == (1292, 4)
    assert read_length(b"\x05", 0) == (5, 1)
    assert read_length(b"\x81\x87", 0) == (135, 2)
    for bad in (b"", b"\x81", b"\x82\x01", b"\x83\x00\x00\x01", b"\x80"):
        with pytest.raises(DecodeError):
            read_length(bad, 0)


def test_ids() -> None:
    assert parse_eui64("90B3D51F30020000") == NO
    assert parse_eui64("90-b3-d5-1f-30-02-00-00") == NO
    assert parse_eui64("90:B3:D5:1F:30:02:00:00") == NO
    assert parse_eui64("90 b3 d5 1f 30 02 00 00") == NO
    assert eui64_hex(NO) == "90b3d51f30020000"
    for bad in (
        "90B3D51F300200",
        "90B3D51F3002000000",
        "zzB3D51F30020000",
        "90B3D51F3002000G",  # 16 letters and digits, not all hex
        "\uff19\uff10B3D51F30020000",  # full-width digits: not ASCII
        "",
    ):
        with pytest.raises(DecodeError, match="is not 16 hex digits"):
            parse_eui64(bad)
    with pytest.raises(DecodeError):
        check_eui64(b"\x00" * 7, "x")


def test_cells_encoding() -> None:
    assert NO_DS_CELL.encode() == bytes.fromhex("300702010303020780")
    assert NO_KA_CELL.encode() == bytes.fromhex("300702010303020308")
    root = TrustAnchorCellIdentifier(0, KeyUsage.KEY_CERT_SIGN)
    assert root.encode() == bytes.fromhex("300702010003020204")
    pp = TrustAnchorCellIdentifier(2, KeyUsage.KEY_AGREEMENT, 1)
    assert pp.encode() == bytes.fromhex("300a02010203020308020101")
    assert TrustAnchorCellIdentifier.decode_tlv(ber.read_single(pp.encode(), "cell")) == pp
    for bits, error in (("030207c0", "bits set in unused positions"), ("030206c0", "exactly one bit set")):
        cell = ber.read_single(bytes.fromhex("3007020103" + bits), "cell")
        with pytest.raises(DecodeError, match=error):
            TrustAnchorCellIdentifier.decode_tlv(cell)


@pytest.mark.parametrize("bad", [1, 2, 3, 6, 7, 8, -1, 64])
def test_unknown_key_usage_is_refused(bad: int) -> None:
    # every encoder refuses a bit that decode_key_usage would refuse, naming the value
    details = TrustAnchorCellDetails(bad, 0, bytes(8), bytes(8))
    for payload in (
        TrustAnchorCellIdentifier(3, bad),  # type: ignore[arg-type]
        ProvideDeviceCertificateCommand(bad),  # type: ignore[arg-type]
        ProvideSecurityCredentialsResponse((RoleCredentials(3, 0, None, (details,)),)),
    ):
        with pytest.raises(EncodeError, match=f"^key usage bit {bad} is not DS/KA/keyCertSign"):
            payload.encode()


def test_ber_lenient_and_strict() -> None:
    item = ber.read_single(bytes.fromhex("30820003050100"), "x")
    assert item.content == bytes.fromhex("050100")
    with pytest.raises(DecodeError):
        ber.read_single(bytes.fromhex("30800500 0000".replace(" ", "")), "x")  # indefinite
    with pytest.raises(DecodeError):
        ber.read_single(bytes.fromhex("3005050100"), "x")  # truncated
    with pytest.raises(DecodeError):
        ber.read_single(bytes.fromhex("300005"), "x")  # trailing
    assert ber.read_single(bytes.fromhex("020101"), "x", ber.TAG_INTEGER).content == b"\x01"
    with pytest.raises(DecodeError, match=r"x: expected INTEGER \(02\), got 0x30 at offset 0"):
        ber.read_single(bytes.fromhex("3000"), "x", ber.TAG_INTEGER)
    assert ber.der_int(1200) == bytes.fromhex("020204B0")
    assert ber.der_int(0x8F66) == bytes.fromhex("0203008F66")
    assert ber.der_int(0) == bytes.fromhex("020100")
    assert ber.der_int(127) == bytes.fromhex("02017F")
    assert ber.der_int(128) == bytes.fromhex("02020080")
    assert ber.der_int(-1) == bytes.fromhex("0201FF")
    assert ber.der_int(-129) == bytes.fromhex("0202FF7F")


def test_sequence_of_checks_every_element_tag() -> None:
    good = ProvideSecurityCredentialsCommand(NO_DS_CELL, (3, 4))
    assert ProvideSecurityCredentialsCommand.decode(good.encode()) == good
    octets_role = ber.sequence(
        NO_DS_CELL.encode(), ber.sequence(ber.der_int(3), ber.tlv(ber.TAG_OCTET_STRING, b"\x04"))
    )
    with pytest.raises(
        DecodeError,
        match=r"^CS02a command.remotePartyRolesCredentialsRequired: "
        r"element tag 0x04 \(expected 0x02\) at offset 16$",
    ):
        ProvideSecurityCredentialsCommand.decode(octets_role)
    with pytest.raises(
        DecodeError, match=r"^CS02a response.roles: element tag 0x02 \(expected 0x30\) at offset 2$"
    ):
        ProvideSecurityCredentialsResponse.decode(ber.sequence(ber.der_int(3)))


def _header(**kw: object) -> GroupingHeader:
    fields: dict[str, object] = {
        "cra": Cra.COMMAND,
        "originator_counter": 1200,
        "business_originator_id": NO,
        "business_target_id": ESME,
        "message_code": 0x0103,
    }
    fields.update(kw)
    return GroupingHeader(**fields)  # type: ignore[arg-type]


def test_header_encode_matches_rtds() -> None:
    assert _header().encode().hex().upper() == (
        "090100000000000004B00890B3D51F300200000800DB1234567890A000020103"
    )
    assert _header().transaction_id.hex().upper() == "0100000000000004B0"
    assert _header().business_ids == (NO, ESME)
    resp = _header(
        cra=Cra.RESPONSE,
        business_originator_id=ESME,
        business_target_id=NO,
        date_time=bytes.fromhex("07DF0101FF000000008000FF"),
    )
    assert resp.encode().hex().upper() == (
        "090200000000000004B00800DB1234567890A00890B3D51F300200000C07DF0101FF000000008000FF020103"
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"business_originator_id": b"\x00" * 7},
        {"business_target_id": b"\x00" * 9},
        {"originator_counter": -1},
        {"originator_counter": 1 << 64},
        {"message_code": 0x10000},
        {"date_time": b"\x00" * 11},
        {"cra": 4},
    ],
)
def test_header_encode_rejects(kw: dict[str, object]) -> None:
    with pytest.raises(EncodeError):
        _header(**kw).encode()


def test_apdu_forms() -> None:
    apdu = GeneralSigningApdu(_header(), b"\x30\x00")
    pre = apdu.encode_precommand()
    # DF ‖ the RTDS grouping header (test_header_encode_matches_rtds) ‖ content length 02 ‖ content 30 00
    assert (
        pre.hex().upper() == "DF090100000000000004B00890B3D51F300200000800DB1234567890A000020103" + "023000"
    )
    assert apdu.encode() == pre
    assert pre[0] == 0xDF and apdu.signed_bytes() == pre[1:]
    decoded, signed = decode_apdu(pre)
    assert decoded == apdu and signed == pre[1:]
    null = apdu.with_signature(b"")
    assert null.encode() == pre + b"\x00"
    assert decode_apdu(null.encode())[0] == null
    signed_apdu = apdu.with_signature(bytes(range(64)))
    wire = signed_apdu.encode()
    assert wire == pre + b"\x40" + bytes(range(64))
    assert decode_apdu(wire)[0] == signed_apdu
    assert encode_signed_apdu(apdu.signed_bytes(), bytes(range(64))) == wire
    with pytest.raises(EncodeError):
        apdu.with_signature(b"\x01" * 63)
    with pytest.raises(EncodeError, match="64 bytes, got 63"):
        encode_signed_apdu(apdu.signed_bytes(), b"\x01" * 63)
    with pytest.raises(EncodeError):
        GeneralSigningApdu(_header(), b"\x30\x00", b"\x01" * 65)
    for bad in (pre + b"\x40" + b"\x00" * 63, pre + b"\x41", pre + b"\x00\x00", pre[:-1]):
        with pytest.raises(DecodeError):
            decode_apdu(bad)


def test_mac_frame_roundtrip() -> None:
    apdu = GeneralSigningApdu(_header(), b"\x30\x00", b"").encode()
    framed = encode_mac_framed(apdu, bytes(12), invocation_counter=7)
    assert framed[:7] == bytes.fromhex("DD000000000000")
    msg = decode_message(framed)
    assert msg.mac == bytes(12) and msg.invocation_counter == 7 and msg.apdu_bytes == apdu
    assert msg.mac_framed
    with pytest.raises(EncodeError):
        encode_mac_framed(apdu, bytes(11))
    for counter in (-1, 1 << 32):
        with pytest.raises(EncodeError, match="invocation counter"):
            encode_mac_framed(apdu, bytes(12), counter)
    # MAC-framed APDU without sig-len byte is rejected
    pre = GeneralSigningApdu(_header(), b"\x30\x00").encode()
    with pytest.raises(DecodeError):
        decode_message(encode_mac_framed(pre, bytes(12)))
    with pytest.raises(DecodeError):
        decode_message(framed[:-1])
    with pytest.raises(DecodeError):
        decode_message(b"")
    with pytest.raises(DecodeError):
        decode_message(b"\x30\x00")


@pytest.mark.parametrize(
    "entry",
    [
        ber.sequence(ber.tlv(ber.TAG_OCTET_STRING, b"x")),
        ber.sequence(),
        ber.sequence(ber.tlv(ber.TAG_INTEGER, b"")),
    ],
)
def test_one_role_decode_refuses_a_malformed_entry_as_the_full_decode_does(entry: bytes) -> None:
    data = ber.sequence(entry)
    with pytest.raises(DecodeError) as full:
        ProvideSecurityCredentialsResponse.decode(data)
    with pytest.raises(DecodeError) as one_role:
        ProvideSecurityCredentialsResponse.decode_roles_of(data, 3)
    assert str(one_role.value) == str(full.value)
