"""Forged GBCS for the refusal tests: a lab world with real keys, and builders of CS02b commands and responses
(and CS02a readings) that carry exactly the defects asked for, signed (and MAC-framed) with real keys so that
nothing else is wrong. Built on lab_testlib and gbcs's public API.

A form (CommandForm, ResponseForm) holds every field as it goes on the wire, plus how the bytes are signed
and framed; `encode()` makes the bytes. A Defect changes a good form in one way and names the parts of the
message it changes (`touches`); `anatomy()` lists the parts of a message, so a test can check that a forged
message differs from the good one exactly where its defect says (forge_problems) and in nothing else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from lab_testlib import der, org

from vdno.client.bundle import AreaCredentials, TrustBundle
from vdno.client.bundle import VanillaGeneration as BenchGeneration
from vdno.gbcs import ber
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, CellUsage, KeyUsage, TrustAnchorCellIdentifier
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse, RoleCredentials, TrustAnchorCellDetails
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    ExecutionOutcome,
    RemotePartySeqNumberChange,
    ReplacementOutcome,
    SpecialistSeqNumber,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import (
    Cra,
    GbcsMessage,
    GeneralSigningApdu,
    GroupingHeader,
    MessageCode,
    decode_message,
)
from vdno.gbcs.mac import add_mac, verify_mac
from vdno.gbcs.signature import sign_apdu, verify_message_signature
from vdno.gbcs.smki import load_certificate
from vdno.labpki.smki import (
    CertifiedKey,
    issue_device_certificate,
    make_device_ca,
    make_issuing_ca,
    make_root_ca,
    new_p256_key,
)
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.profile import (
    ACB_KA_CELL,
    ROOT_CELL,
    SUPPLIER_DS_CELL,
    SUPPLIER_KA_CELL,
    DeviceKey,
    DeviceProfile,
)

VANILLA_ID = bytes.fromhex("7a11a0000000f002")  # the active vanilla generation (2)
OLD_VANILLA_ID = bytes.fromhex("7a11a0000000f001")  # generation 1, signing-only (rotations sign with it)
AREA_ID = 14
OTHER_AREA_ID = 15
AREA_ENTITY = bytes.fromhex("0d000000000000f4")
OTHER_AREA_ENTITY = bytes.fromhex("0d000000000000f5")
ACB_ID = bytes.fromhex("90b3d51f30000002")
SUPPLIER_ID = bytes.fromhex("90b3d51f30010000")
DEVICE_ID = bytes.fromhex("00db0000f0f0f001")
OTHER_DEVICE_ID = bytes.fromhex("00db0000f0f0f002")
STRANGER_ID = bytes.fromhex("5a5a5a5a5a5a5a5a")  # an entity nobody registered
RESPONSE_TIME = b"\x07\xea\x01\x01\xff\x00\x00\x00\x00\x80\x00\xff"  # 2026-01-01 as a DLMS date-time
COUNTER = 1_700_000_000_000_001


class _CertifiedPair:
    """A DS and a KA key with their certificates, and the certificates' DER."""

    ds: CertifiedKey
    ka: CertifiedKey

    @property
    def ds_der(self) -> bytes:
        return der(self.ds.certificate)

    @property
    def ka_der(self) -> bytes:
        return der(self.ka.certificate)


@dataclass(frozen=True)
class Party(_CertifiedPair):
    """An organisation's DS and KA keys with their SMKI certificates (role in the OU)."""

    entity_id: bytes
    ds: CertifiedKey
    ka: CertifiedKey

    @property
    def ds_key(self) -> ec.EllipticCurvePrivateKey:
        return self.ds.signing_key

    @property
    def ds_ski(self) -> bytes:
        return load_certificate(self.ds_der).subject_key_identifier

    @property
    def ka_ski(self) -> bytes:
        return load_certificate(self.ka_der).subject_key_identifier

    def replacements(self) -> tuple[TrustAnchorReplacement, ...]:
        """This party's certificates into the NO DS and NO KA cells."""
        return (
            TrustAnchorReplacement(self.ds_der, NO_DS_CELL),
            TrustAnchorReplacement(self.ka_der, NO_KA_CELL),
        )


def _party(issuing: CertifiedKey, entity_id: bytes, role: int, now: datetime) -> Party:
    return Party(
        entity_id, org(issuing, entity_id, role, "ds", now), org(issuing, entity_id, role, "ka", now)
    )


@dataclass(frozen=True)
class Device(_CertifiedPair):
    """A meter's own DS and KA keys and device certificates."""

    device_id: bytes
    ds: CertifiedKey
    ka: CertifiedKey


def _device(device_ca: CertifiedKey, device_id: bytes, now: datetime) -> Device:
    keys = new_p256_key(), new_p256_key()
    ds, ka = (
        CertifiedKey(issue_device_certificate(device_ca, key.public_key(), device_id, usage, now=now), key)
        for key, usage in zip(keys, ("ds", "ka"), strict=True)
    )
    return Device(device_id, ds, ka)


# --- the forms ------------------------------------------------------------------------------------------

Signature = Literal["valid", "flipped", "absent", "null"]


@dataclass(frozen=True)
class CommandForm:
    """Every field of a CS02b command as it goes on the wire; how it is signed and framed.

    signature: valid = signed by `signer`; flipped = that signature with its last bit flipped; absent = the
    pre-command form (no signature-length byte); null = signature length 00. mac: (the ACB's KA private key,
    the device KA certificate DER) MAC-frames the signed APDU as an ACB would; mac_flipped breaks that MAC.
    extra_control / extra_payload: raw DER elements after the last element of authorisingRemotePartyControl
    / of the CommandPayload (fields no CS02b has)."""

    counter: int
    originator: bytes
    target: bytes
    replacements: tuple[TrustAnchorReplacement, ...]
    path: tuple[bytes, ...]
    signer: ec.EllipticCurvePrivateKey
    cra: Cra = Cra.COMMAND
    message_code: int = MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR
    mode: int = 3
    seq_number: int | None = None  # None: the Originator Counter (GBCS 13.3.5)
    ta_cell: TrustAnchorCellIdentifier | None = NO_DS_CELL
    plaintext_symmetric_key: bytes | None = None
    apply_time_based_cpv_checks: int | None = None
    floor_seq_number: int | None = 0
    specialist_floor_seq_numbers: tuple[SpecialistSeqNumber, ...] | None = None
    other_seq_number_changes: tuple[RemotePartySeqNumberChange, ...] | None = None
    execution_date_time: datetime | None = None
    extra_control: bytes = b""
    extra_payload: bytes = b""
    signature: Signature = "valid"
    mac: tuple[ec.EllipticCurvePrivateKey, bytes] | None = None
    mac_flipped: bool = False

    def header(self) -> GroupingHeader:
        return GroupingHeader(
            cra=self.cra,
            originator_counter=self.counter,
            business_originator_id=self.originator,
            business_target_id=self.target,
            message_code=self.message_code,
        )

    def payload(self) -> UpdateSecurityCredentialsCommand:
        return UpdateSecurityCredentialsCommand(
            AuthorisingRemotePartyControl(
                mode=self.mode,
                seq_number=self.counter if self.seq_number is None else self.seq_number,
                ta_cell=self.ta_cell,
                plaintext_symmetric_key=self.plaintext_symmetric_key,
                apply_time_based_cpv_checks=self.apply_time_based_cpv_checks,
                floor_seq_number=self.floor_seq_number,
                specialist_floor_seq_numbers=self.specialist_floor_seq_numbers,
                other_seq_number_changes=self.other_seq_number_changes,
            ),
            self.replacements,
            self.path,
            self.execution_date_time,
        )

    def content(self) -> bytes:
        encoded = self.payload().encode()
        if not (self.extra_control or self.extra_payload):
            return encoded
        control, *rest = ber.read_children(ber.read_single(encoded, "forged payload"), "forged payload")
        control_der = ber.tlv(ber.TAG_SEQUENCE, control.content + self.extra_control)
        return ber.sequence(control_der, *(item.raw for item in rest), self.extra_payload)

    def apdu(self) -> GeneralSigningApdu:
        return _signed(GeneralSigningApdu(self.header(), self.content()), self.signer, self.signature)

    def encode(self) -> bytes:
        apdu = self.apdu()
        if self.mac is None:
            return apdu.encode()
        acb_ka, device_ka_certificate = self.mac
        framed = add_mac(
            apdu.encode(), apdu.header, acb_ka, x509.load_der_x509_certificate(device_ka_certificate)
        )
        return framed[:-1] + bytes([framed[-1] ^ 0x01]) if self.mac_flipped else framed


@dataclass(frozen=True)
class ResponseForm:
    """Every field of a meter's CS02b response (GS-only, signed by the device) as it goes on the wire.
    outcome None: commandAccepted only (as for a future-dated command)."""

    counter: int
    originator: bytes
    target: bytes
    outcome: ExecutionOutcome | None
    signer: ec.EllipticCurvePrivateKey
    cra: Cra = Cra.RESPONSE
    message_code: int = MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR
    date_time: bytes | None = RESPONSE_TIME
    extra_payload: bytes = b""
    signature: Signature = "valid"

    def header(self) -> GroupingHeader:
        return GroupingHeader(
            cra=self.cra,
            originator_counter=self.counter,
            business_originator_id=self.originator,
            business_target_id=self.target,
            message_code=self.message_code,
            date_time=self.date_time,
        )

    def content(self) -> bytes:
        encoded = UpdateSecurityCredentialsResponse(self.outcome).encode()
        if not self.extra_payload:
            return encoded
        items = ber.read_children(ber.read_single(encoded, "forged response"), "forged response")
        return ber.sequence(*(item.raw for item in items), self.extra_payload)

    def encode(self) -> bytes:
        return _signed(
            GeneralSigningApdu(self.header(), self.content()), self.signer, self.signature
        ).encode()


def _signed(apdu: GeneralSigningApdu, key: ec.EllipticCurvePrivateKey, how: Signature) -> GeneralSigningApdu:
    if how == "absent":
        return apdu
    if how == "null":
        return apdu.with_signature(b"")
    signed = sign_apdu(apdu, key)
    if how == "flipped":
        assert signed.signature is not None
        return signed.with_signature(signed.signature[:-1] + bytes([signed.signature[-1] ^ 0x01]))
    return signed


# --- the world --------------------------------------------------------------------------------------------


@dataclass
class ForgeWorld:
    """A lab SMKI hierarchy (root, issuing CA, device CA) and the parties of a vanilla custodian's world:
    the active vanilla generation 2 and the signing-only generation 1, two area DNOs, the ACB and a
    supplier, and two meters with their own keys. Certificates are valid from a day ago."""

    now: datetime
    root: CertifiedKey
    issuing: CertifiedKey
    device_ca: CertifiedKey
    vanilla: Party
    old_vanilla: Party
    area: Party
    other_area: Party
    acb: Party
    supplier: Party
    device: Device
    other_device: Device
    stranger_key: ec.EllipticCurvePrivateKey = field(default_factory=new_p256_key)  # certified by no one

    @property
    def issuing_der(self) -> bytes:
        return der(self.issuing.certificate)

    @property
    def root_der(self) -> bytes:
        return der(self.root.certificate)

    @property
    def device_ca_der(self) -> bytes:
        return der(self.device_ca.certificate)

    def bench_bundle(self) -> TrustBundle:
        """What a bench pins: generation 1 signing-only, generation 2 active, areas AREA_ID and
        OTHER_AREA_ID, the SMKI CAs."""
        return TrustBundle(
            generations=(
                BenchGeneration(
                    1, OLD_VANILLA_ID, self.old_vanilla.ds_der, self.old_vanilla.ka_der, "signing-only"
                ),
                BenchGeneration(2, VANILLA_ID, self.vanilla.ds_der, self.vanilla.ka_der, "active"),
            ),
            areas=(
                AreaCredentials(AREA_ID, "forge area", AREA_ENTITY, self.area.ds_der, self.area.ka_der),
                AreaCredentials(
                    OTHER_AREA_ID,
                    "other area",
                    OTHER_AREA_ENTITY,
                    self.other_area.ds_der,
                    self.other_area.ka_der,
                ),
            ),
            issuing_ca_certificate=self.issuing_der,
            root_ca_certificate=self.root_der,
            device_ca_certificate=self.device_ca_der,
        )

    def acb_mac(self, device: Device | None = None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """What an ACB MAC-frames a command with for `device` (default: the world's meter)."""
        return self.acb.ka.signing_key, (device or self.device).ka_der

    # good commands: each passes its checks as built
    def hand_out(self, counter: int = COUNTER) -> CommandForm:
        """The custodian's command: vanilla generation 2 hands the meter to area AREA_ID (GS-only)."""
        return CommandForm(
            counter, VANILLA_ID, DEVICE_ID, self.area.replacements(), (self.issuing_der,), self.vanilla.ds_key
        )

    def rotation(self, counter: int = COUNTER) -> CommandForm:
        """The custodian's rotation: signing-only generation 1 moves the meter onto active generation 2."""
        return CommandForm(
            counter,
            OLD_VANILLA_ID,
            DEVICE_ID,
            self.vanilla.replacements(),
            (self.issuing_der,),
            self.old_vanilla.ds_key,
        )

    def hand_in(self, counter: int = COUNTER) -> CommandForm:
        """Area AREA_ID's DNO moves the meter onto vanilla generation 2, MAC-framed by the ACB (as DCC
        returns it)."""
        return CommandForm(
            counter,
            AREA_ENTITY,
            DEVICE_ID,
            self.vanilla.replacements(),
            (self.issuing_der,),
            self.area.ds_key,
            mac=self.acb_mac(),
        )

    def response(self, command: CommandForm, statuses: tuple[int, ...] = (0, 0)) -> ResponseForm:
        """The meter's signed response to `command`: each replacement's cell with its status; replaced cells
        report the new certificate's ids, others keep the holder's (the command's originator)."""
        holder = self._party_of(command.originator)
        outcomes = []
        for replacement, status in zip(command.replacements, statuses, strict=False):
            ds = replacement.target.key_usage == KeyUsage.DIGITAL_SIGNATURE
            old = (holder.entity_id, holder.ds_ski if ds else holder.ka_ski)
            new = load_certificate(replacement.certificate)
            replacing = (new.entity_id, new.subject_key_identifier) if status == 0 else old
            outcomes.append(ReplacementOutcome(replacement.target, status, *old, *replacing))
        outcome = ExecutionOutcome(
            command.counter if command.seq_number is None else command.seq_number,
            command.mode,
            (RemotePartySeqNumberChange(3, 0),),
            tuple(outcomes),
        )
        return ResponseForm(
            command.counter, command.target, command.originator, outcome, self.device.ds.signing_key
        )

    def _party_of(self, entity_id: bytes) -> Party:
        parties = (self.vanilla, self.old_vanilla, self.area, self.other_area, self.acb, self.supplier)
        return next((p for p in parties if p.entity_id == entity_id), self.area)

    def reading(
        self, holder: Party, seq_number: int = 7, device: Device | None = None, counter: int = 1
    ) -> bytes:
        """The meter's signed CS02a response (to a local read of roles 3): its NO cells hold `holder`'s
        certificates, its stored NO seq number is `seq_number`."""
        device = device or self.device
        cells = (
            TrustAnchorCellDetails(
                KeyUsage.DIGITAL_SIGNATURE, CellUsage.MANAGEMENT, holder.entity_id, holder.ds_ski
            ),
            TrustAnchorCellDetails(
                KeyUsage.KEY_AGREEMENT, CellUsage.MANAGEMENT, holder.entity_id, holder.ka_ski
            ),
        )
        content = ProvideSecurityCredentialsResponse((RoleCredentials(3, 0, seq_number, cells),)).encode()
        header = GroupingHeader(
            Cra.RESPONSE,
            counter,
            device.device_id,
            holder.entity_id,
            MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS,
        )
        return sign_apdu(GeneralSigningApdu(header, content), device.ds.signing_key).encode()

    def meter(self, holder: Party, seq_number: int = 0, require_acb_mac: bool = True) -> SimulatedDevice:
        """The world's meter in the simulator, its NO cells holding `holder`'s certificates (seq number and
        `holder`'s anti-replay counter at `seq_number`), the ACB's KA certificate in its ACB KA cell and the
        supplier's in the supplier cells; it signs with the world's device DS key."""
        profile = DeviceProfile(
            device_id=self.device.device_id,
            cells={
                ROOT_CELL: self.root_der,
                NO_DS_CELL: holder.ds_der,
                NO_KA_CELL: holder.ka_der,
                ACB_KA_CELL: self.acb.ka_der,
                SUPPLIER_DS_CELL: self.supplier.ds_der,
                SUPPLIER_KA_CELL: self.supplier.ka_der,
            },
            seq_numbers={2: 0, 3: seq_number},
            device_ds=DeviceKey(self.device.ds.signing_key, self.device.ds_der),
            device_ka=DeviceKey(self.device.ka.signing_key, self.device.ka_der),
            require_acb_mac=require_acb_mac,
            originator_counters={holder.entity_id: seq_number} if seq_number else {},
        )
        return SimulatedDevice(profile)


def make_forge_world() -> ForgeWorld:
    now = datetime.now(UTC) - timedelta(days=1)
    root = make_root_ca(now=now)
    issuing = make_issuing_ca(root, now=now)
    device_ca = make_device_ca(root, now=now)
    return ForgeWorld(
        now=now,
        root=root,
        issuing=issuing,
        device_ca=device_ca,
        vanilla=_party(issuing, VANILLA_ID, 3, now),
        old_vanilla=_party(issuing, OLD_VANILLA_ID, 3, now),
        area=_party(issuing, AREA_ENTITY, 3, now),
        other_area=_party(issuing, OTHER_AREA_ENTITY, 3, now),
        acb=_party(issuing, ACB_ID, 4, now),
        supplier=_party(issuing, SUPPLIER_ID, 2, now),
        device=_device(device_ca, DEVICE_ID, now),
        other_device=_device(device_ca, OTHER_DEVICE_ID, now),
    )


# --- defects ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """One thing wrong with a message: `forge` turns a good form into the forged one; `touches` names the
    parts of the message (keys of anatomy()) that then differ from the good one."""

    name: str
    touches: frozenset[str]
    forge: Callable[[ForgeWorld, CommandForm], CommandForm]

    def __call__(self, world: ForgeWorld, form: CommandForm) -> CommandForm:
        return self.forge(world, form)


def _defect(name: str, *touches: str) -> Callable[[Callable[[ForgeWorld, CommandForm], CommandForm]], Defect]:
    def wrap(forge: Callable[[ForgeWorld, CommandForm], CommandForm]) -> Defect:
        return Defect(name, frozenset(touches), forge)

    return wrap


# An INTEGER under a context tag no CS02b control uses ([7]), and a trailing element no CommandPayload has.
UNKNOWN_CONTROL_FIELD = ber.der_int(1, 0x87)
UNKNOWN_PAYLOAD_ELEMENT = ber.der_int(42)
TOMORROW = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)


def _swap_role_3_ka_for(cell: TrustAnchorCellIdentifier) -> Callable[[ForgeWorld, CommandForm], CommandForm]:
    def forge(world: ForgeWorld, form: CommandForm) -> CommandForm:
        ds, ka = form.replacements
        return replace(form, replacements=(ds, TrustAnchorReplacement(ka.certificate, cell)))

    return forge


COMMAND_DEFECTS: dict[str, Defect] = {
    d.name: d
    for d in (
        _defect("ka-cell-authorises", "control.ta_cell")(
            lambda w, f: replace(f, ta_cell=NO_KA_CELL)  # the NO keyAgreement cell, not digitalSignature
        ),
        _defect("supplier-cell-authorises", "control.ta_cell")(
            lambda w, f: replace(f, ta_cell=SUPPLIER_DS_CELL)
        ),
        _defect("no-authorising-cell", "control.ta_cell")(lambda w, f: replace(f, ta_cell=None)),
        _defect("future-dated", "execution_date_time")(lambda w, f: replace(f, execution_date_time=TOMORROW)),
        _defect("extra-replacement", "replacements")(
            lambda w, f: replace(
                f,
                replacements=(
                    *f.replacements,
                    TrustAnchorReplacement(f.replacements[1].certificate, replace(NO_KA_CELL, cell_usage=1)),
                ),
            )
        ),
        _defect("duplicate-replacement", "replacements")(
            lambda w, f: replace(f, replacements=(*f.replacements, f.replacements[0]))
        ),
        _defect("ds-replaced-twice", "replacements")(
            lambda w, f: replace(f, replacements=(f.replacements[0], f.replacements[0]))
        ),
        _defect("missing-replacement", "replacements")(
            lambda w, f: replace(f, replacements=f.replacements[:1])
        ),
        _defect("replaces-supplier-cell", "replacements")(_swap_role_3_ka_for(SUPPLIER_KA_CELL)),
        _defect("certificates-swapped", "replacements")(
            lambda w, f: replace(
                f,
                replacements=(
                    TrustAnchorReplacement(f.replacements[1].certificate, NO_DS_CELL),
                    TrustAnchorReplacement(f.replacements[0].certificate, NO_KA_CELL),
                ),
            )
        ),
        _defect("other-area-certificates", "replacements")(
            lambda w, f: replace(f, replacements=w.other_area.replacements())
        ),
        _defect("no-path", "path")(lambda w, f: replace(f, path=())),
        _defect("root-as-path", "path")(lambda w, f: replace(f, path=(w.root_der,))),
        _defect("other-recipient", "target")(lambda w, f: replace(f, target=OTHER_DEVICE_ID)),
        _defect("other-originator", "originator")(lambda w, f: replace(f, originator=STRANGER_ID)),
        _defect("seq-number-not-counter", "control.seq_number")(
            lambda w, f: replace(f, seq_number=f.counter + 1)
        ),
        _defect("seq-number-stale", "control.seq_number")(lambda w, f: replace(f, seq_number=7)),
        _defect("signature-flipped", "signature")(lambda w, f: replace(f, signature="flipped")),
        _defect("signed-by-stranger", "signature")(lambda w, f: replace(f, signer=w.stranger_key)),
        # a MAC-framed APDU always carries its signature-length byte: there, unsigned is signature length 00
        _defect("unsigned", "signature")(
            lambda w, f: replace(f, signature="absent" if f.mac is None else "null")
        ),
        _defect("null-signature", "signature")(lambda w, f: replace(f, signature="null")),
        _defect("unknown-control-field", "control.extra")(
            lambda w, f: replace(f, extra_control=UNKNOWN_CONTROL_FIELD)
        ),
        _defect("extra-payload-element", "payload.extra")(
            lambda w, f: replace(f, extra_payload=UNKNOWN_PAYLOAD_ELEMENT)
        ),
        _defect("message-code-0102", "message_code")(lambda w, f: replace(f, message_code=0x0102)),
        _defect("mode-2", "control.mode")(lambda w, f: replace(f, mode=2)),
        _defect("mode-8-consistent", "control.mode", "message_code")(
            lambda w, f: replace(f, mode=8, message_code=0x0108)
        ),
        _defect("not-a-command", "cra")(lambda w, f: replace(f, cra=Cra.ALERT)),
        _defect("plaintext-key", "control.plaintext_symmetric_key")(
            lambda w, f: replace(f, plaintext_symmetric_key=bytes(16))
        ),
        _defect("other-role-seq-change", "control.other_seq_number_changes")(
            lambda w, f: replace(f, other_seq_number_changes=(RemotePartySeqNumberChange(2, 0),))
        ),
        _defect("specialist-floor", "control.specialist_floor_seq_numbers")(
            lambda w, f: replace(f, specialist_floor_seq_numbers=(SpecialistSeqNumber(0, 0),))
        ),
        _defect("disapplies-time-checks", "control.apply_time_based_cpv_checks")(
            lambda w, f: replace(f, apply_time_based_cpv_checks=1)
        ),
        _defect("other-floor", "control.floor_seq_number")(lambda w, f: replace(f, floor_seq_number=5)),
        _defect("not-mac-framed", "mac")(lambda w, f: replace(f, mac=None)),
        _defect("mac-flipped", "mac")(lambda w, f: replace(f, mac_flipped=True)),
        _defect("mac-framed", "mac")(lambda w, f: replace(f, mac=w.acb_mac())),
    )
}


@dataclass(frozen=True)
class ResponseDefect:
    """As Defect, for a meter's response."""

    name: str
    touches: frozenset[str]
    forge: Callable[[ForgeWorld, ResponseForm], ResponseForm]

    def __call__(self, world: ForgeWorld, form: ResponseForm) -> ResponseForm:
        return self.forge(world, form)


def _outcome(form: ResponseForm, **changes: object) -> ResponseForm:
    assert form.outcome is not None
    return replace(form, outcome=replace(form.outcome, **changes))  # type: ignore[arg-type]


def _cells(form: ResponseForm, change: Callable[[ReplacementOutcome], ReplacementOutcome]) -> ResponseForm:
    assert form.outcome is not None
    return _outcome(form, replacement_outcomes=tuple(change(o) for o in form.outcome.replacement_outcomes))


def _first_cell_only(form: ResponseForm) -> ResponseForm:
    assert form.outcome is not None
    return _outcome(form, replacement_outcomes=form.outcome.replacement_outcomes[:1])


RESPONSE_DEFECTS: dict[str, ResponseDefect] = {
    d.name: d
    for d in (
        ResponseDefect("is-a-command", frozenset({"cra"}), lambda w, f: replace(f, cra=Cra.COMMAND)),
        ResponseDefect(
            "message-code-0102", frozenset({"message_code"}), lambda w, f: replace(f, message_code=0x0102)
        ),
        ResponseDefect(
            "from-other-device",
            frozenset({"originator"}),
            lambda w, f: replace(f, originator=OTHER_DEVICE_ID),
        ),
        ResponseDefect("to-someone-else", frozenset({"target"}), lambda w, f: replace(f, target=STRANGER_ID)),
        ResponseDefect(
            "counter-not-echoed", frozenset({"counter"}), lambda w, f: replace(f, counter=f.counter + 1)
        ),
        ResponseDefect(
            "signature-flipped", frozenset({"signature"}), lambda w, f: replace(f, signature="flipped")
        ),
        ResponseDefect(
            "signed-with-device-ka-key",
            frozenset({"signature"}),
            lambda w, f: replace(f, signer=w.device.ka.signing_key),
        ),
        ResponseDefect(
            "signed-by-other-device",
            frozenset({"signature"}),
            lambda w, f: replace(f, signer=w.other_device.ds.signing_key),
        ),
        ResponseDefect("unsigned", frozenset({"signature"}), lambda w, f: replace(f, signature="absent")),
        ResponseDefect(
            "extra-payload-element",
            frozenset({"payload.extra"}),
            lambda w, f: replace(f, extra_payload=UNKNOWN_PAYLOAD_ELEMENT),
        ),
        ResponseDefect(
            "no-execution-outcome",
            frozenset(
                {
                    "outcome",
                    "outcome.seq_number",
                    "outcome.mode",
                    "outcome.seq_number_changes",
                    "outcome.replacement_outcomes",
                }
            ),
            lambda w, f: replace(f, outcome=None),
        ),
        ResponseDefect(
            "outcome-seq-number",
            frozenset({"outcome.seq_number"}),
            lambda w, f: _outcome(f, seq_number=f.counter + 1),
        ),
        ResponseDefect("outcome-mode-8", frozenset({"outcome.mode"}), lambda w, f: _outcome(f, mode=8)),
        ResponseDefect(
            "no-cell-outcomes",
            frozenset({"outcome.replacement_outcomes"}),
            lambda w, f: _outcome(f, replacement_outcomes=()),
        ),
        ResponseDefect(
            "ka-cell-not-reported",
            frozenset({"outcome.replacement_outcomes"}),
            lambda w, f: _first_cell_only(f),
        ),
        ResponseDefect(
            "reports-other-certificates",
            frozenset({"outcome.replacement_outcomes"}),
            lambda w, f: _cells(f, lambda o: replace(o, replacing_subject_unique_id=STRANGER_ID)),
        ),
        ResponseDefect(
            "reports-other-key",
            frozenset({"outcome.replacement_outcomes"}),
            lambda w, f: _cells(f, lambda o: replace(o, replacing_subject_key_identifier=bytes(8))),
        ),
    )
}


# --- anatomy: which parts of two messages differ --------------------------------------------------------

_CONTROL_TAGS = {
    ber.TAG_INTEGER: "control.mode",
    0x80: "control.plaintext_symmetric_key",
    0x81: "control.apply_time_based_cpv_checks",
    0xA2: "control.ta_cell",
    0x83: "control.seq_number",
    0x84: "control.floor_seq_number",
    0xA5: "control.specialist_floor_seq_numbers",
    0xA6: "control.other_seq_number_changes",
}


def anatomy(
    message: bytes,
    signer: ec.EllipticCurvePublicKey,
    acb_mac: tuple[ec.EllipticCurvePrivateKey, bytes] | None = None,
) -> dict[str, object]:
    """The parts of a CS02b command or response, each as comparable values: header fields, payload elements
    (read as BER TLVs, so unknown elements show up too), whether the signature verifies with `signer`
    (valid / invalid / absent) and the MAC (absent, or the 12 bytes: a MAC is over the whole APDU, so any
    change of the APDU changes it; compared only when asked with acb_mac)."""
    message_ = decode_message(message)
    header = message_.apdu.header
    parts: dict[str, object] = {
        "cra": int(header.cra),
        "counter": header.originator_counter,
        "originator": header.business_originator_id,
        "target": header.business_target_id,
        "message_code": header.message_code,
        "date_time": header.date_time,
        "supplementary": header.supplementary,
    }
    if not message_.apdu.signature:
        parts["signature"] = "absent" if message_.apdu.signature is None else "null"
    else:
        try:
            verify_message_signature(message_, signer)
            parts["signature"] = "valid"
        except GbcsError:
            parts["signature"] = "invalid"
    parts["mac"] = "framed" if message_.mac_framed else "absent"
    if message_.mac_framed and acb_mac is not None:
        parts["mac"] = "valid" if _mac_ok(message_, acb_mac) else "invalid"
    elements = ber.read_children(ber.read_single(message_.apdu.content, "payload"), "payload")
    if elements[0].tag == ber.TAG_SEQUENCE:  # a command's control; a response starts with NULL
        _command_parts(elements, parts)
    else:
        _response_parts(elements, parts)
    return parts


def _mac_ok(message: GbcsMessage, acb_mac: tuple[ec.EllipticCurvePrivateKey, bytes]) -> bool:
    key, device_ka = acb_mac
    try:
        verify_mac(message, key, x509.load_der_x509_certificate(device_ka))
    except GbcsError:
        return False
    return True


def _command_parts(elements: list[ber.Tlv], parts: dict[str, object]) -> None:
    control, replacements, path, *rest = elements
    found = {name: None for name in _CONTROL_TAGS.values()}
    extra: list[bytes] = []
    for item in ber.read_children(control, "control"):
        name = _CONTROL_TAGS.get(item.tag)
        if name is None or found[name] is not None:
            extra.append(item.raw)
        else:
            found[name] = item.raw  # type: ignore[assignment]
    parts.update(found)
    parts["control.extra"] = tuple(extra)
    parts["replacements"] = tuple(item.raw for item in ber.read_children(replacements, "replacements"))
    parts["path"] = tuple(item.raw for item in ber.read_children(path, "path"))
    times = [item.raw for item in rest if item.tag == ber.TAG_GENERALIZED_TIME]
    parts["execution_date_time"] = tuple(times)
    parts["payload.extra"] = tuple(item.raw for item in rest if item.tag != ber.TAG_GENERALIZED_TIME)


def _response_parts(elements: list[ber.Tlv], parts: dict[str, object]) -> None:
    accepted, *rest = elements
    parts["accepted"] = accepted.raw
    outcome = rest[0] if rest and rest[0].tag == ber.TAG_SEQUENCE else None
    parts["payload.extra"] = tuple(item.raw for item in rest[1 if outcome else 0 :])
    parts["outcome"] = "present" if outcome is not None else "absent"
    names = (
        "outcome.seq_number",
        "outcome.mode",
        "outcome.seq_number_changes",
        "outcome.replacement_outcomes",
    )
    items = ber.read_children(outcome, "outcome") if outcome is not None else []
    for name, item in zip(names, items, strict=False):
        parts[name] = item.raw
    for name in names[len(items) :]:
        parts[name] = None


def differing_parts(good: Mapping[str, object], forged: Mapping[str, object]) -> set[str]:
    return {key for key in good.keys() | forged.keys() if good.get(key) != forged.get(key)}


def forge_problems(
    world: ForgeWorld,
    good: CommandForm | ResponseForm,
    defect: Defect | ResponseDefect,
) -> set[str]:
    """The parts in which the forged message differs from the good one beyond what its defect says, plus
    any part the defect says it touches that it does not: empty when the forgery is exactly the defect.
    Signatures and MACs are made anew over changed bytes, so only a defect of theirs shows in them."""
    forged = defect(world, good)  # type: ignore[arg-type]
    mac = good.mac if isinstance(good, CommandForm) and good.mac is not None else world.acb_mac()
    public = good.signer.public_key()
    before = anatomy(good.encode(), public, mac)
    after = anatomy(forged.encode(), public, mac)
    return differing_parts(before, after) ^ set(defect.touches)
