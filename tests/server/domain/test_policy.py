"""The policy checks before anything is signed (server/domain/policy.py), each refusal reached with real
certificates and real signed CS02a readings from the forge world (tests/forge_testlib.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from forge_testlib import (
    AREA_ENTITY,
    AREA_ID,
    OLD_VANILLA_ID,
    OTHER_AREA_ENTITY,
    OTHER_AREA_ID,
    STRANGER_ID,
    VANILLA_ID,
    ForgeWorld,
    Party,
    make_forge_world,
)
from lab_testlib import der

from vdno.gbcs.cells import CellUsage, KeyUsage
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse, RoleCredentials, TrustAnchorCellDetails
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode
from vdno.gbcs.signature import sign_apdu
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.labpki.smki import make_device_ca
from vdno.server.domain.errors import (
    BenchNotEnrolled,
    CustodyConflict,
    DeviceAlreadyVanilla,
    DeviceCertificateUntrusted,
    DeviceNotVanilla,
    InvalidRequest,
    NoActiveGeneration,
    OfficerNotEnrolled,
    OperationNotAllowed,
    UnknownNetworkOperator,
)
from vdno.server.domain.policy import (
    check_device_certificate,
    find_custodial_generation,
    hand_in_target,
    holder_of_network_operator_cell,
    read_network_operator_cells,
    read_network_operator_signing_cell,
    require_enrolled,
    require_enrolled_officer,
    rotation_target,
    within_validity,
)
from vdno.server.domain.values import (
    Area,
    Bench,
    BenchOperation,
    BenchStatus,
    CellState,
    GenerationStatus,
    Officer,
    OfficerStatus,
    VanillaGeneration,
)


@pytest.fixture(scope="module")
def world() -> ForgeWorld:
    return make_forge_world()


@pytest.fixture(scope="module")
def device_ca(world: ForgeWorld) -> SmkiCertificate:
    return load_certificate(world.device_ca_der)


@pytest.fixture(scope="module")
def device_cert(world: ForgeWorld) -> SmkiCertificate:
    return load_certificate(world.device.ds_der)


def generation(
    party: Party, number: int, status: GenerationStatus, compromised: bool = False
) -> VanillaGeneration:
    return VanillaGeneration(
        number,
        party.entity_id,
        f"pkcs11:object=g{number}-ds",
        f"pkcs11:object=g{number}-ka",
        party.ds_der,
        party.ka_der,
        status,
        compromised,
    )


def area(party: Party, area_id: int) -> Area:
    return Area(area_id, f"area {area_id}", party.entity_id, party.ds_der, party.ka_der)


def cs02a(
    world: ForgeWorld,
    roles: tuple[RoleCredentials, ...],
    *,
    cra: Cra = Cra.RESPONSE,
    code: int = MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS,
    originator: bytes | None = None,
    key: object = None,
) -> bytes:
    """A CS02a response signed by the world's meter (or `key`), with the roles given."""
    header = GroupingHeader(cra, 1, originator or world.device.device_id, VANILLA_ID, code)
    content = ProvideSecurityCredentialsResponse(roles).encode()
    return sign_apdu(GeneralSigningApdu(header, content), key or world.device.ds.signing_key).encode()  # type: ignore[arg-type]


def cells(*pairs: tuple[KeyUsage, Party]) -> tuple[TrustAnchorCellDetails, ...]:
    return tuple(
        TrustAnchorCellDetails(
            usage,
            CellUsage.MANAGEMENT,
            p.entity_id,
            p.ds_ski if usage == KeyUsage.DIGITAL_SIGNATURE else p.ka_ski,
        )
        for usage, p in pairs
    )


# --- enrolment ---------------------------------------------------------------------------------------------


def test_an_enrolled_bench_passes_and_every_other_is_refused_by_name() -> None:
    bench = Bench(
        "bench-01", BenchStatus.ENROLLED, frozenset({BenchOperation.HAND_OUT}), certificate_sha256="ab"
    )
    require_enrolled("bench-01", bench)
    require_enrolled("bench-01", bench, BenchOperation.HAND_OUT, "ab")
    require_enrolled("bench-01", bench, None, None)  # no certificate presented to compare: CN alone
    require_enrolled("bench-01", replace(bench, certificate_sha256=None), None, "cd")  # nothing pinned
    with pytest.raises(BenchNotEnrolled, match="'bench-01' is not enrolled or has been revoked"):
        require_enrolled("bench-01", None)
    with pytest.raises(BenchNotEnrolled, match="is not enrolled or has been revoked"):
        require_enrolled("bench-01", replace(bench, status=BenchStatus.REVOKED))
    with pytest.raises(BenchNotEnrolled, match="'bench-01' presented a certificate other than"):
        require_enrolled("bench-01", bench, None, "cd")
    with pytest.raises(OperationNotAllowed, match="'bench-01' is not enrolled for rotation"):
        require_enrolled("bench-01", bench, BenchOperation.ROTATION, "ab")


def test_an_enrolled_officer_passes_and_a_revoked_or_unknown_one_is_refused() -> None:
    require_enrolled_officer("o-1", Officer("o-1", OfficerStatus.ENROLLED))
    with pytest.raises(OfficerNotEnrolled, match="'o-1' is not enrolled or has been revoked"):
        require_enrolled_officer("o-1", Officer("o-1", OfficerStatus.REVOKED))
    with pytest.raises(OfficerNotEnrolled):
        require_enrolled_officer("o-1", None)


# --- the device certificate ----------------------------------------------------------------------------


def test_validity_includes_both_ends_and_nothing_outside(device_cert: SmkiCertificate) -> None:
    c = device_cert.certificate
    assert within_validity(device_cert, c.not_valid_before_utc)
    assert within_validity(device_cert, c.not_valid_after_utc)
    assert not within_validity(device_cert, c.not_valid_before_utc - timedelta(seconds=1))
    ca = load_certificate(der(make_device_ca().certificate))
    assert not within_validity(ca, ca.certificate.not_valid_after_utc + timedelta(seconds=1))


def test_the_device_certificate_of_the_named_device_under_the_device_ca_passes(
    world: ForgeWorld, device_ca: SmkiCertificate
) -> None:
    cert = check_device_certificate(
        world.device.device_id, world.device.ds_der, device_ca, world.now + timedelta(hours=1)
    )
    assert cert.entity_id == world.device.device_id
    assert der(cert.certificate) == world.device.ds_der


def test_a_device_certificate_that_is_not_the_named_devices_ds_certificate_under_the_ca_is_refused(
    world: ForgeWorld, device_ca: SmkiCertificate
) -> None:
    at = world.now + timedelta(hours=1)
    device_id = world.device.device_id
    with pytest.raises(InvalidRequest, match="device_certificate is not a usable certificate"):
        check_device_certificate(device_id, b"\x30\x03\x02\x01\x01", device_ca, at)
    with pytest.raises(DeviceCertificateUntrusted, match=f"not the certificate of device {device_id.hex()}"):
        check_device_certificate(device_id, world.other_device.ds_der, device_ca, at)
    with pytest.raises(DeviceCertificateUntrusted, match="not the certificate of device"):
        check_device_certificate(device_id, world.area.ds_der, device_ca, at)  # an organisation's
    with pytest.raises(DeviceCertificateUntrusted, match="not a digital-signing certificate"):
        check_device_certificate(device_id, world.device.ka_der, device_ca, at)
    other_ca = load_certificate(der(make_device_ca(now=world.now).certificate))
    with pytest.raises(
        DeviceCertificateUntrusted, match=f"of {device_id.hex()} does not chain to the configured"
    ):
        check_device_certificate(device_id, world.device.ds_der, other_ca, at)
    with pytest.raises(DeviceCertificateUntrusted, match="does not chain"):  # before the CA's validity
        check_device_certificate(device_id, world.device.ds_der, device_ca, world.now - timedelta(days=1))


# --- the meter's CS02a reading -----------------------------------------------------------------------------


def test_the_signing_cell_is_read_from_the_network_operators_entries_only(
    world: ForgeWorld, device_cert: SmkiCertificate
) -> None:
    device_id = world.device.device_id
    reading = cs02a(
        world,
        (
            RoleCredentials(2, 0, 5, cells((KeyUsage.DIGITAL_SIGNATURE, world.supplier))),  # the supplier's
            RoleCredentials(
                3, 0, 9, cells((KeyUsage.KEY_AGREEMENT, world.area), (KeyUsage.DIGITAL_SIGNATURE, world.area))
            ),
        ),
    )
    assert read_network_operator_signing_cell(device_id, reading, device_cert) == CellState(
        AREA_ENTITY, world.area.ds_ski
    )
    read = read_network_operator_cells(device_id, reading, device_cert)
    assert read.signing == CellState(AREA_ENTITY, world.area.ds_ski)
    assert read.key_agreement == CellState(AREA_ENTITY, world.area.ka_ski)
    assert read.seq_number == 9


def test_the_first_network_operator_entry_gives_the_seq_number_and_the_first_cells(
    world: ForgeWorld, device_cert: SmkiCertificate
) -> None:
    reading = cs02a(
        world,
        (
            RoleCredentials(3, 0, 4, cells((KeyUsage.DIGITAL_SIGNATURE, world.vanilla))),
            RoleCredentials(
                3,
                0,
                8,
                cells((KeyUsage.DIGITAL_SIGNATURE, world.area), (KeyUsage.KEY_AGREEMENT, world.other_area)),
            ),
            RoleCredentials(3, 0, 9, cells((KeyUsage.KEY_AGREEMENT, world.area))),
        ),
    )
    read = read_network_operator_cells(world.device.device_id, reading, device_cert)
    assert read.signing == CellState(VANILLA_ID, world.vanilla.ds_ski)
    assert read.key_agreement == CellState(OTHER_AREA_ENTITY, world.other_area.ka_ski)
    assert read.seq_number == 4
    assert (
        read_network_operator_signing_cell(world.device.device_id, reading, device_cert).entity_id
        == VANILLA_ID
    )


def test_a_reading_without_a_key_agreement_cell_reads_none(
    world: ForgeWorld, device_cert: SmkiCertificate
) -> None:
    reading = cs02a(world, (RoleCredentials(3, 0, 2, cells((KeyUsage.DIGITAL_SIGNATURE, world.area))),))
    read = read_network_operator_cells(world.device.device_id, reading, device_cert)
    assert read.key_agreement is None and read.seq_number == 2


def test_a_reading_without_a_network_operator_signing_cell_is_refused(
    world: ForgeWorld, device_cert: SmkiCertificate
) -> None:
    device_id = world.device.device_id
    for roles in (
        (RoleCredentials(3, 0, 2, cells((KeyUsage.KEY_AGREEMENT, world.area))),),
        (RoleCredentials(2, 0, 2, cells((KeyUsage.DIGITAL_SIGNATURE, world.supplier))),),
        (RoleCredentials(3, 0, 2, None),),
    ):
        reading = cs02a(world, roles)
        with pytest.raises(DeviceNotVanilla, match=f"device {device_id.hex()} reported no network-operator"):
            read_network_operator_signing_cell(device_id, reading, device_cert)
        with pytest.raises(
            UnknownNetworkOperator, match=f"device {device_id.hex()} reported no network-operator"
        ):
            read_network_operator_cells(device_id, reading, device_cert)


def test_a_reading_that_is_not_the_devices_signed_cs02a_response_is_refused(
    world: ForgeWorld, device_cert: SmkiCertificate
) -> None:
    roles = (RoleCredentials(3, 0, 2, cells((KeyUsage.DIGITAL_SIGNATURE, world.area))),)
    device_id = world.device.device_id
    cases = {
        "is not a CS02a response": cs02a(world, roles, cra=Cra.COMMAND),
        "is not a CS02a response$": cs02a(world, roles, code=MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE),
        "was not sent by the device named in device_id": cs02a(
            world, roles, originator=world.other_device.device_id
        ),
        "is not a valid signed CS02a response": cs02a(world, roles, key=world.other_device.ds.signing_key),
    }
    for match, reading in cases.items():
        for read in (read_network_operator_signing_cell, read_network_operator_cells):
            with pytest.raises(InvalidRequest, match=match):
                read(device_id, reading, device_cert)
    with pytest.raises(InvalidRequest, match="is not a valid signed CS02a response"):
        read_network_operator_cells(device_id, b"\xdf\x09garbage", device_cert)


# --- who holds the meter -----------------------------------------------------------------------------------


def test_the_registered_area_holding_the_cell_is_named(world: ForgeWorld) -> None:
    areas = [area(world.other_area, OTHER_AREA_ID), area(world.area, AREA_ID)]
    generations = [generation(world.vanilla, 2, GenerationStatus.ACTIVE)]
    held = holder_of_network_operator_cell(
        world.device.device_id,
        CellState(AREA_ENTITY, world.area.ds_ski),
        areas,
        generations,
        load_certificate,
    )
    assert held.area_id == AREA_ID


def test_a_meter_already_on_any_vanilla_generation_is_refused_naming_it(world: ForgeWorld) -> None:
    generations = [
        generation(world.vanilla, 2, GenerationStatus.ACTIVE),
        generation(world.old_vanilla, 1, GenerationStatus.DESTROYED, compromised=True),
    ]
    for party, number, status in ((world.vanilla, 2, "active"), (world.old_vanilla, 1, "destroyed")):
        with pytest.raises(
            DeviceAlreadyVanilla, match=f"already holds vanilla generation {number} \\({status}\\)"
        ):
            holder_of_network_operator_cell(
                world.device.device_id, CellState(party.entity_id, b"any"), [], generations, load_certificate
            )


def test_an_area_entity_with_another_key_or_an_unknown_entity_is_refused(world: ForgeWorld) -> None:
    areas = [area(world.area, AREA_ID)]
    device_id = world.device.device_id
    with pytest.raises(
        UnknownNetworkOperator, match=f"certificate of area {AREA_ID} .* which is not the registered one"
    ):
        holder_of_network_operator_cell(
            device_id, CellState(AREA_ENTITY, world.other_area.ds_ski), areas, [], load_certificate
        )
    with pytest.raises(
        UnknownNetworkOperator, match=f"entity {STRANGER_ID.hex()} in its NO cells, which is neither"
    ):
        holder_of_network_operator_cell(
            device_id, CellState(STRANGER_ID, world.area.ds_ski), areas, [], load_certificate
        )


def test_the_hand_in_target_is_the_newest_active_generation_not_compromised(world: ForgeWorld) -> None:
    g1 = generation(world.old_vanilla, 1, GenerationStatus.ACTIVE)
    g2 = generation(world.vanilla, 2, GenerationStatus.ACTIVE)
    g3 = generation(world.vanilla, 3, GenerationStatus.ACTIVE, compromised=True)
    g4 = generation(world.vanilla, 4, GenerationStatus.SIGNING_ONLY)
    assert hand_in_target([g2, g1, g3, g4]).generation == 2
    assert hand_in_target([g1]).generation == 1
    for none_active in ([], [g3], [g4], [replace(g2, status=GenerationStatus.CERTIFIED)]):
        with pytest.raises(NoActiveGeneration, match="no vanilla generation is active"):
            hand_in_target(none_active)


def test_only_a_generation_that_may_sign_and_whose_certificate_is_in_the_cell_signs(
    world: ForgeWorld,
) -> None:
    device_id = world.device.device_id
    cell = CellState(VANILLA_ID, world.vanilla.ds_ski)
    active = generation(world.vanilla, 2, GenerationStatus.ACTIVE)
    assert find_custodial_generation(device_id, cell, [active], load_certificate) == active
    signing_only = generation(world.vanilla, 2, GenerationStatus.SIGNING_ONLY)
    assert find_custodial_generation(device_id, cell, [signing_only], load_certificate) == signing_only
    # the same entity with another key first: the one whose certificate is in the cell is found
    other_key = replace(active, generation=5, ds_certificate=world.area.ds_der)
    assert find_custodial_generation(device_id, cell, [other_key, active], load_certificate) == active
    for status in (
        GenerationStatus.PENDING,
        GenerationStatus.CERTIFIED,
        GenerationStatus.DISABLED,
        GenerationStatus.DESTROY_SCHEDULED,
        GenerationStatus.DESTROYED,
    ):
        with pytest.raises(DeviceNotVanilla) as refused:
            find_custodial_generation(device_id, cell, [replace(active, status=status)], load_certificate)
        assert str(refused.value) == (
            f"device {device_id.hex()} is not in vanilla custody: "
            f"it holds vanilla generation 2, which is {status.value}"
        )
    with pytest.raises(DeviceNotVanilla, match=r"it holds vanilla generation 2, which is compromised$"):
        find_custodial_generation(device_id, cell, [replace(active, compromised=True)], load_certificate)
    with pytest.raises(DeviceNotVanilla):  # another generation's entity
        find_custodial_generation(
            device_id, cell, [generation(world.old_vanilla, 1, GenerationStatus.ACTIVE)], load_certificate
        )
    with pytest.raises(DeviceNotVanilla):  # the entity, another key
        find_custodial_generation(device_id, cell, [other_key], load_certificate)
    assert OLD_VANILLA_ID != VANILLA_ID


def test_a_rotation_goes_onto_the_active_generation_and_never_onto_the_one_held(world: ForgeWorld) -> None:
    old = generation(world.old_vanilla, 1, GenerationStatus.SIGNING_ONLY)
    active = generation(world.vanilla, 2, GenerationStatus.ACTIVE)
    device_id = world.device.device_id
    assert rotation_target(device_id, old, [old, active]) == active
    with pytest.raises(
        CustodyConflict, match=f"{device_id.hex()} already holds the active vanilla generation 2"
    ):
        rotation_target(device_id, active, [old, active])
    with pytest.raises(NoActiveGeneration):
        rotation_target(device_id, old, [old])


def test_a_generation_that_may_not_sign_or_of_another_entity_does_not_hide_the_one_that_may(
    forge_world: ForgeWorld,
) -> None:
    w = forge_world
    cell = CellState(VANILLA_ID, w.vanilla.ds_ski)
    active = generation(w.vanilla, 2, GenerationStatus.ACTIVE)
    retired = generation(w.vanilla, 1, GenerationStatus.DISABLED)
    other = generation(w.old_vanilla, 3, GenerationStatus.ACTIVE)
    assert (
        find_custodial_generation(w.device.device_id, cell, [retired, other, active], load_certificate)
        == active
    )


def test_the_refusals_say_exactly_what_failed(forge_world: ForgeWorld) -> None:
    """The messages reach the bench as they are (the INVALID_ARGUMENT / FAILED_PRECONDITION details)."""
    w = forge_world
    device_id = w.device.device_id
    device_ca = load_certificate(w.device_ca_der)
    device_cert = load_certificate(w.device.ds_der)
    at = w.now + timedelta(hours=1)
    with pytest.raises(DeviceCertificateUntrusted) as refused:
        check_device_certificate(device_id, w.device.ka_der, device_ca, at)
    assert str(refused.value) == "device_certificate is not a digital-signing certificate"
    roles = (RoleCredentials(3, 0, 2, cells((KeyUsage.DIGITAL_SIGNATURE, w.area))),)
    with pytest.raises(InvalidRequest) as refused:
        read_network_operator_cells(
            device_id, cs02a(w, roles, originator=w.other_device.device_id), device_cert
        )
    assert str(refused.value) == "credentials_response was not sent by the device named in device_id"
    with pytest.raises(NoActiveGeneration) as refused:
        hand_in_target([])
    assert str(refused.value) == "no vanilla generation is active: a hand-in has nothing to move onto"
    with pytest.raises(UnknownNetworkOperator) as refused:
        holder_of_network_operator_cell(device_id, CellState(STRANGER_ID, b"k"), [], [], load_certificate)
    assert str(refused.value) == (
        f"device {device_id.hex()} holds entity {STRANGER_ID.hex()} in its NO cells, which is neither a "
        "registered area DNO nor a vanilla generation"
    )


def test_a_meter_not_in_vanilla_custody_is_refused_naming_who_holds_it(world: ForgeWorld) -> None:
    device_id = world.device.device_id
    generations = [generation(world.vanilla, 2, GenerationStatus.ACTIVE)]
    areas = [area(world.other_area, OTHER_AREA_ID), area(world.area, AREA_ID)]
    with pytest.raises(DeviceNotVanilla) as refused:
        find_custodial_generation(
            device_id, CellState(AREA_ENTITY, world.area.ds_ski), generations, load_certificate, lambda: areas
        )
    assert str(refused.value) == (
        f"device {device_id.hex()} is not in vanilla custody: already handed out to area {AREA_ID} "
        f"(area {AREA_ID})"
    )
    with pytest.raises(DeviceNotVanilla) as refused:
        find_custodial_generation(
            device_id,
            CellState(bytes.fromhex("5a5a5a5a5a5a5aab"), b"k"),
            generations,
            load_certificate,
            lambda: areas,
        )
    assert str(refused.value) == (
        f"device {device_id.hex()} is not in vanilla custody: its NO cells hold entity 5A5A5A5A5A5A5AAB, "
        "which this custodian does not know"
    )
