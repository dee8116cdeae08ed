"""Hypothesis round-trips and robustness against random / truncated bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from gbcs_testlib import Vector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdno.gbcs.cells import CellUsage, KeyUsage, TrustAnchorCellIdentifier
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
    ReplacementOutcome,
    SpecialistSeqNumber,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import (
    DeviceCertificateResponse,
    ProvideDeviceCertificateCommand,
    UpdateDeviceCertificateCommand,
    UpdateDeviceCertificateResponse,
)
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, decode_apdu, decode_message
from vdno.gbcs.message import decode_any

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.binary(min_size=8, max_size=8)
u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 2**40)
roles = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 127])
key_usages = st.sampled_from(list(KeyUsage))
cells = st.builds(
    TrustAnchorCellIdentifier,
    roles,
    key_usages,
    st.sampled_from([CellUsage.MANAGEMENT, CellUsage.PREPAYMENT_TOP_UP]),
)
# a fake certificate: any DER SEQUENCE works for the payload codec
fake_certs = st.binary(min_size=0, max_size=300).map(
    lambda b: b"\x30" + (bytes([len(b)]) if len(b) < 128 else bytes([0x82, len(b) >> 8, len(b) & 0xFF])) + b
)
times = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))

headers = st.builds(
    GroupingHeader,
    cra=st.sampled_from(list(Cra)),
    originator_counter=u64,
    business_originator_id=ids,
    business_target_id=ids,
    message_code=st.integers(0, 0xFFFF),
    date_time=st.none() | st.binary(min_size=12, max_size=12),
    supplementary=st.binary(max_size=200),
)
signatures = st.none() | st.just(b"") | st.binary(min_size=64, max_size=64)
apdus = st.builds(GeneralSigningApdu, headers, st.binary(max_size=700), signatures)

specialists = st.lists(st.builds(SpecialistSeqNumber, st.integers(0, 3), small), max_size=3).map(tuple)
changes = st.lists(
    st.builds(RemotePartySeqNumberChange, roles, small, st.none() | specialists), max_size=3
).map(tuple)
controls = st.builds(
    AuthorisingRemotePartyControl,
    mode=st.integers(0, 9),
    seq_number=u64,
    ta_cell=st.none() | cells,
    plaintext_symmetric_key=st.none() | st.binary(max_size=32),
    apply_time_based_cpv_checks=st.none() | st.integers(0, 1),
    floor_seq_number=st.none() | small,
    specialist_floor_seq_numbers=st.none() | specialists,
    other_seq_number_changes=st.none() | changes,
)
commands = st.builds(
    UpdateSecurityCredentialsCommand,
    controls,
    st.lists(st.builds(TrustAnchorReplacement, fake_certs, cells), max_size=4).map(tuple),
    st.lists(fake_certs, max_size=2).map(tuple),
    st.none() | times,
)
outcomes = st.builds(
    ExecutionOutcome,
    small,
    st.integers(0, 9),
    changes,
    st.lists(st.builds(ReplacementOutcome, cells, st.integers(0, 127), ids, ids, ids, ids), max_size=6).map(
        tuple
    ),
)
responses = st.builds(UpdateSecurityCredentialsResponse, st.none() | outcomes)
alerts = st.builds(
    FutureDatedAlert, st.sampled_from([0x8F66, 0x8F67]) | st.integers(0, 0xFFFF), times, outcomes
)
cs02a_commands = st.builds(ProvideSecurityCredentialsCommand, cells, st.lists(roles, max_size=8).map(tuple))
cs02a_responses = st.builds(
    ProvideSecurityCredentialsResponse,
    st.lists(
        st.builds(
            RoleCredentials,
            roles,
            st.integers(0, 127),
            st.none() | small,
            st.none()
            | st.lists(
                st.builds(TrustAnchorCellDetails, key_usages.map(int), st.integers(0, 1), ids, ids),
                max_size=3,
            ).map(tuple),
        ),
        max_size=5,
    ).map(tuple),
)
cs02e = (
    st.builds(ProvideDeviceCertificateCommand, key_usages)
    | st.builds(DeviceCertificateResponse, certificate=fake_certs)
    | st.builds(DeviceCertificateResponse, response_code=st.integers(0, 255))
    | st.builds(UpdateDeviceCertificateCommand, fake_certs)
    | st.builds(UpdateDeviceCertificateResponse, st.integers(0, 255))
)


@SETTINGS
@given(headers, st.binary(max_size=300), signatures)
def test_apdu_roundtrip(header: GroupingHeader, content: bytes, signature: bytes | None) -> None:
    apdu = GeneralSigningApdu(header, content, signature)
    wire = apdu.encode()
    decoded, signed = decode_apdu(wire)
    assert decoded == apdu
    assert signed == apdu.signed_bytes()
    msg = decode_message(wire)
    assert msg.apdu == apdu and not msg.mac_framed


@SETTINGS
@given(commands)
def test_cs02b_command_roundtrip(command: UpdateSecurityCredentialsCommand) -> None:
    der = command.encode()
    assert UpdateSecurityCredentialsCommand.decode(der) == command
    assert UpdateSecurityCredentialsCommand.decode(der).encode() == der


@SETTINGS
@given(responses)
def test_cs02b_response_roundtrip(response: UpdateSecurityCredentialsResponse) -> None:
    assert UpdateSecurityCredentialsResponse.decode(response.encode()) == response


@SETTINGS
@given(alerts)
def test_cs02b_alert_roundtrip(alert: FutureDatedAlert) -> None:
    assert FutureDatedAlert.decode(alert.encode()) == alert


@SETTINGS
@given(cs02a_commands, cs02a_responses)
def test_cs02a_roundtrip(
    command: ProvideSecurityCredentialsCommand, response: ProvideSecurityCredentialsResponse
) -> None:
    assert ProvideSecurityCredentialsCommand.decode(command.encode()) == command
    assert ProvideSecurityCredentialsResponse.decode(response.encode()) == response


@SETTINGS
@given(cs02e)
def test_cs02d_e_roundtrip(payload: object) -> None:
    encoded = payload.encode()  # type: ignore[attr-defined]
    assert type(payload).decode(encoded) == payload  # type: ignore[attr-defined]


PAYLOAD_DECODERS = [
    UpdateSecurityCredentialsCommand.decode,
    UpdateSecurityCredentialsResponse.decode,
    FutureDatedAlert.decode,
    ProvideSecurityCredentialsCommand.decode,
    ProvideSecurityCredentialsResponse.decode,
    ProvideDeviceCertificateCommand.decode,
    DeviceCertificateResponse.decode,
    UpdateDeviceCertificateCommand.decode,
    UpdateDeviceCertificateResponse.decode,
]


def _only_gbcs_errors(fn: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(GbcsError):
        fn(data)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_never_leak(data: bytes) -> None:
    _only_gbcs_errors(decode_any, data)
    _only_gbcs_errors(decode_any, b"\xdf" + data)
    _only_gbcs_errors(decode_any, b"\xdd" + bytes(6) + data)
    for decoder in PAYLOAD_DECODERS:
        _only_gbcs_errors(decoder, data)
        _only_gbcs_errors(decoder, b"\x30" + data)


@SETTINGS
@given(st.data())
def test_truncated_and_mutated_vectors(vectors: list[Vector], data: st.DataObject) -> None:
    vector = data.draw(st.sampled_from(vectors))
    wire = vector.data
    cut = data.draw(st.integers(0, len(wire) - 1))
    truncated = wire[:cut]
    _only_gbcs_errors(decode_any, truncated)
    if vector.kind != "PRECOMMAND":
        # a signed/MACed message cut anywhere never decodes as signed: either framing breaks, or (cut exactly
        # after the content of a GS-only message) it reads as an unsigned pre-command form
        try:
            decoded = decode_any(truncated)
        except GbcsError:
            pass
        else:
            assert decoded.message.apdu.signature is None, f"truncation at {cut} of {vector.name}"
            assert not decoded.message.mac_framed
    pos = data.draw(st.integers(0, len(wire) - 1))
    mutated = bytearray(wire)
    mutated[pos] = data.draw(st.integers(0, 255))
    _only_gbcs_errors(decode_any, bytes(mutated))
    insert = wire[:pos] + data.draw(st.binary(min_size=1, max_size=4)) + wire[pos:]
    _only_gbcs_errors(decode_any, insert)


@SETTINGS
@given(headers, commands)
def test_generated_cs02b_message_decodes(
    header: GroupingHeader, command: UpdateSecurityCredentialsCommand
) -> None:
    from dataclasses import replace

    header = replace(header, cra=Cra.COMMAND, message_code=0x0100 + command.control.mode)
    wire = GeneralSigningApdu(header, command.encode(), b"").encode()
    decoded = decode_any(wire)
    assert decoded.payload == command


@SETTINGS
@given(st.binary(max_size=300))
def test_load_certificate_random_bytes(data: bytes) -> None:
    from vdno.gbcs.smki import load_certificate

    _only_gbcs_errors(load_certificate, data)
    _only_gbcs_errors(load_certificate, b"\x30\x82" + data)
