"""Key management on the token: generate EC P-256 signing key pairs inside it, read their attributes
back, find them, and have them sign a PKCS#10 CSR. These run in the single-threaded bootstrap on a
session from `open_token_session` (server/hsm/token.py); the signing service uses Pkcs11Signer.

Private keys are made with CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE true, CKA_EXTRACTABLE false
(docs/architecture.md §5.1) and never leave the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from vdno.gbcs.signature import raw_to_der
from vdno.server.domain.errors import HsmUnavailable, KeyNotInCustody
from vdno.server.hsm.faults import TRANSIENT_ERRORS

P256_OID = "1.2.840.10045.3.1.7"
P256_PARAMS = encode_named_curve_parameters("secp256r1")


@dataclass(frozen=True)
class PrivateKeyAttributes:
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    local: bool  # generated in the token (CKA_LOCAL)
    token: bool
    private: bool
    sign: bool
    key_type: str  # "EC" for the keys vdno uses
    ec_params: bytes
    label: str
    id: bytes

    def custody_problems(self) -> list[str]:
        """What makes this key unfit to be a custodial signing key (empty when fit)."""
        problems = []
        if self.key_type != "EC":
            problems.append("not an EC key")
        if self.ec_params != P256_PARAMS:
            problems.append("not on curve P-256")
        if not self.sensitive:
            problems.append("not sensitive")
        if self.extractable:
            problems.append("extractable")
        if not self.always_sensitive:
            problems.append("not always sensitive")
        if not self.never_extractable:
            problems.append("was extractable once")
        if not self.local:
            problems.append("not generated in the token")
        if not self.token:
            problems.append("not a token object")
        if not self.sign:
            problems.append("not allowed to sign")
        return problems


@dataclass(frozen=True)
class EnsuredKeyPair:
    label: str
    id: bytes
    created: bool
    public_key: ec.EllipticCurvePublicKey


def generate_signing_keypair(session: Any, label: str, key_id: bytes) -> tuple[Any, Any]:
    """Generate an EC P-256 key pair inside the token; returns (public, private) python-pkcs11 objects."""
    if not label:
        raise ValueError("a key label is required")
    params = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: P256_PARAMS}, local=True)
    private_template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.DERIVE: False,
        Attribute.UNWRAP: False,
    }
    public_template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.DERIVE: False,
        Attribute.WRAP: False,
    }
    try:
        public, private = params.generate_keypair(
            id=key_id,
            label=label,
            store=True,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template=public_template,
            private_template=private_template,
        )
    except TRANSIENT_ERRORS as exc:
        raise HsmUnavailable("the PKCS#11 token went away while generating a key") from exc
    except p11e.PKCS11Error as exc:
        raise HsmUnavailable(f"the token could not generate the key pair {label!r}") from exc
    return public, private


def find_key(
    session: Any, object_class: ObjectClass, label: str | None = None, key_id: bytes | None = None
) -> Any:
    """The one EC key object of that class with that label and/or id; KeyNotInCustody if none or several."""
    if label is None and key_id is None:
        raise KeyNotInCustody("a key must be named by label (object=) or id")
    what = _describe(label, key_id)
    kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
    template: dict[Attribute, Any] = {Attribute.CLASS: object_class, Attribute.KEY_TYPE: KeyType.EC}
    if label is not None:
        template[Attribute.LABEL] = label
    if key_id is not None:
        template[Attribute.ID] = key_id
    # The search is run to its end (C_FindObjectsFinal). python-pkcs11's get_key leaves it open when it
    # finds several objects, and every later search on the session then fails (CKR_OPERATION_ACTIVE).
    found = list(session.get_objects(template))
    if not found:
        # NoSuchKey as the cause, as get_key raises it: server/hsm/faults.py, key_lookup_error, reads it.
        raise KeyNotInCustody(f"no {kind} EC key {what} in the token") from p11e.NoSuchKey(what)
    if len(found) > 1:
        raise KeyNotInCustody(f"more than one {kind} EC key {what} in the token")
    return found[0]


def read_private_key_attributes(
    session: Any, label: str | None = None, key_id: bytes | None = None
) -> PrivateKeyAttributes:
    """Read back the custody-relevant attributes of the private key found by label/id."""
    return attributes_of(find_key(session, ObjectClass.PRIVATE_KEY, label, key_id))


def attributes_of(key: Any) -> PrivateKeyAttributes:
    names = (
        Attribute.SENSITIVE,
        Attribute.EXTRACTABLE,
        Attribute.ALWAYS_SENSITIVE,
        Attribute.NEVER_EXTRACTABLE,
        Attribute.LOCAL,
        Attribute.TOKEN,
        Attribute.PRIVATE,
        Attribute.SIGN,
        Attribute.KEY_TYPE,
        Attribute.EC_PARAMS,
        Attribute.LABEL,
        Attribute.ID,
    )
    # python-pkcs11 leaves out an attribute the object does not have: a key of another type has no
    # CKA_EC_PARAMS, and is then refused by its checks rather than failing here.
    values = key.get_attributes(names)
    key_type = values[Attribute.KEY_TYPE]
    return PrivateKeyAttributes(
        sensitive=bool(values[Attribute.SENSITIVE]),
        extractable=bool(values[Attribute.EXTRACTABLE]),
        always_sensitive=bool(values[Attribute.ALWAYS_SENSITIVE]),
        never_extractable=bool(values[Attribute.NEVER_EXTRACTABLE]),
        local=bool(values[Attribute.LOCAL]),
        token=bool(values[Attribute.TOKEN]),
        private=bool(values[Attribute.PRIVATE]),
        sign=bool(values[Attribute.SIGN]),
        key_type=getattr(key_type, "name", str(key_type)),
        ec_params=bytes(values.get(Attribute.EC_PARAMS, b"")),
        label=str(values[Attribute.LABEL]),
        id=bytes(values[Attribute.ID]),
    )


def check_custody(key: Any, what: str) -> None:
    """KeyNotInCustody unless the private key is a sensitive, never-extractable P-256 token key."""
    require_custody(attributes_of(key), what)


def require_custody(attributes: PrivateKeyAttributes, what: str) -> None:
    """KeyNotInCustody naming every problem (PrivateKeyAttributes.custody_problems) of key `what`."""
    problems = attributes.custody_problems()
    if problems:
        raise KeyNotInCustody(f"key {what} fails its attribute checks: {', '.join(problems)}")


def public_key_from_ec_point(ec_point: bytes) -> ec.EllipticCurvePublicKey:
    """CKA_EC_POINT -> cryptography key. PKCS#11 wants a DER OCTET STRING around the uncompressed
    point (SoftHSM does that); some tokens store the raw point: accept both."""
    point = bytes(ec_point)
    if not (len(point) == 65 and point[0] == 0x04):
        try:
            point = bytes(asn1_core.OctetString.load(point).native)
        except ValueError as exc:
            raise KeyNotInCustody("the public key object holds a malformed EC point") from exc
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise KeyNotInCustody("the public key object holds a malformed EC point") from exc


def public_key_of(
    session: Any, label: str | None = None, key_id: bytes | None = None
) -> ec.EllipticCurvePublicKey:
    key = find_key(session, ObjectClass.PUBLIC_KEY, label, key_id)
    return public_key_from_ec_point(bytes(key[Attribute.EC_POINT]))


def ensure_keypair(session: Any, label: str, key_id: bytes) -> EnsuredKeyPair:
    """Idempotent: the P-256 key pair labelled `label`, generated in the token if absent.

    An existing private key with that label is returned (created False) after its attributes pass the
    custody checks; its stored id is reported. Needs an R/W session.
    """
    try:
        private = find_key(session, ObjectClass.PRIVATE_KEY, label=label)
    except KeyNotInCustody:
        if _exists(session, ObjectClass.PRIVATE_KEY, label):
            raise
        generate_signing_keypair(session, label, key_id)
        return EnsuredKeyPair(label, key_id, True, public_key_of(session, label=label, key_id=key_id))
    check_custody(private, f"{label!r}")
    stored_id = bytes(private[Attribute.ID])
    return EnsuredKeyPair(label, stored_id, False, public_key_of(session, label=label, key_id=stored_id))


def _exists(session: Any, object_class: ObjectClass, label: str) -> bool:
    found = session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label})
    return any(True for _ in found)


def sign_digest_with(private_key: Any, digest: bytes) -> bytes:
    """Raw r||s (64 bytes) ECDSA signature of a SHA-256 digest with CKM_ECDSA."""
    if len(digest) != 32:
        raise ValueError("a SHA-256 digest is 32 bytes")
    signature = bytes(private_key.sign(digest, mechanism=Mechanism.ECDSA))
    if len(signature) != 64:
        raise HsmUnavailable("the token returned a malformed ECDSA signature")
    return signature


SubjectLike: TypeAlias = asn1_x509.Name | x509.Name | Sequence[tuple[Any, Any]]


def build_name(subject: SubjectLike) -> asn1_x509.Name:
    """An asn1crypto Name from an asn1crypto Name, a cryptography Name, or (oid, value) pairs in order.

    In pairs, oid is a dotted string, an asn1crypto name ("common_name") or a cryptography
    ObjectIdentifier; value is a str (UTF8String where asn1crypto's attribute table allows a
    DirectoryString or knows no type, else the string type it names, e.g. IA5String for email) or an
    asn1crypto value used as is.
    One attribute per RDN.
    """
    if isinstance(subject, asn1_x509.Name):
        return subject
    if isinstance(subject, x509.Name):
        return asn1_x509.Name.load(subject.public_bytes())
    rdns = []
    for oid, value in subject:
        oid_text = getattr(oid, "dotted_string", oid)
        type_ = asn1_x509.NameType(oid_text)
        if isinstance(value, str):
            value = _string_value(type_, value)
        rdns.append(
            asn1_x509.RelativeDistinguishedName([asn1_x509.NameTypeAndValue({"type": type_, "value": value})])
        )
    return asn1_x509.Name(name="", value=asn1_x509.RDNSequence(rdns))


def _string_value(type_: asn1_x509.NameType, value: str) -> Any:
    """Wrap text in the ASN.1 string type asn1crypto expects for that attribute (UTF8String if free)."""
    spec = asn1_x509.NameTypeAndValue._oid_specs.get(type_.native)
    if spec is None or spec is asn1_x509.DirectoryString:
        return (
            asn1_x509.DirectoryString(name="utf8_string", value=value)
            if spec
            else asn1_core.UTF8String(value)
        )
    if isinstance(spec, type) and issubclass(spec, asn1_core.AbstractString):
        return spec(value)
    raise ValueError(f"subject attribute {type_.native} is not text; pass an asn1crypto value")


def sign_csr(
    session: Any,
    subject: SubjectLike,
    label: str | None = None,
    key_id: bytes | None = None,
) -> bytes:
    """A DER PKCS#10 CSR for `subject` whose public key and signature (ecdsa-with-SHA256) come from the
    token's key pair named by label/id. The private key never leaves the token."""
    private = find_key(session, ObjectClass.PRIVATE_KEY, label, key_id)
    public = public_key_of(session, label, key_id)
    spki = public.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": build_name(subject),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
            "attributes": [],
        }
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(info.dump())
    try:
        raw = sign_digest_with(private, digest.finalize())
    except TRANSIENT_ERRORS as exc:
        raise HsmUnavailable("the PKCS#11 token went away while signing a CSR") from exc
    except p11e.PKCS11Error as exc:
        raise HsmUnavailable("the token could not sign the CSR") from exc
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": raw_to_der(raw),
        }
    )
    return bytes(request.dump())


def _describe(label: str | None, key_id: bytes | None) -> str:
    parts = []
    if label is not None:
        parts.append(f"labelled {label!r}")
    if key_id is not None:
        parts.append(f"with id {key_id.hex()}")
    return " and ".join(parts)
