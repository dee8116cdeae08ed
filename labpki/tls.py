"""A TLS CA for mutual TLS between clients (benches, officers) and the server; separate from the SMKI
hierarchy. ECDSA P-256 keys and ecdsa-with-SHA256 signatures. A client certificate's CN is the bench or
officer id and its OU the role."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vdno.gbcs.smki import subject_key_identifier_for as subject_key_identifier
from vdno.labpki.errors import LabPkiError
from vdno.labpki.smki import (
    CertifiedKey,
    authority_key_identifier,
    key_usage_extension,
    new_p256_key,
    random_serial,
    utc_now,
)

CLOCK_SKEW = timedelta(minutes=5)


def _start(now: datetime | None) -> datetime:
    """notBefore: `now` less CLOCK_SKEW, so a peer whose clock is a little behind accepts the certificate."""
    return utc_now(now) - CLOCK_SKEW


BENCH_ROLE = "vdno-bench"
OFFICER_ROLE = "vdno-officer"


def _name(common_name: str, role: str | None = None) -> x509.Name:
    if not common_name:
        raise LabPkiError("a TLS certificate needs a non-empty common name")
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attributes)


def make_tls_ca(name: str = "VDNO-LAB-TLS-CA", now: datetime | None = None, days: int = 3650) -> CertifiedKey:
    """Self-signed TLS CA: BC CA:TRUE pathlen 0, KU keyCertSign+cRLSign (critical), SKI."""
    key = new_p256_key()
    subject = _name(name)
    start = _start(now)
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(subject)
        .subject_name(subject)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage_extension(None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(key.public_key())), critical=False)
    )
    return CertifiedKey(builder.sign(key, hashes.SHA256()), key)


def _issue(
    ca: CertifiedKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None,
    now: datetime | None,
    days: int,
    role: str | None = None,
) -> CertifiedKey:
    key = new_p256_key()
    start = _start(now)
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(ca.certificate.subject)
        .subject_name(_name(common_name, role))
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage_extension("ds"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(key.public_key())), critical=False)
        .add_extension(authority_key_identifier(ca.certificate), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return CertifiedKey(builder.sign(ca.signing_key, hashes.SHA256()), key)


def issue_server_certificate(
    ca: CertifiedKey,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    now: datetime | None = None,
    days: int = 825,
) -> CertifiedKey:
    """Server certificate (new P-256 key), EKU serverAuth, SAN DNS names and IP addresses; CN = first name."""
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if not names:
        raise LabPkiError("a server certificate needs at least one hostname or IP address")
    common_name = hostnames[0] if hostnames else ips[0]
    return _issue(
        ca, common_name, ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName(names), now, days
    )


def issue_client_certificate(
    ca: CertifiedKey,
    common_name: str,
    now: datetime | None = None,
    days: int = 825,
    role: str | None = BENCH_ROLE,
) -> CertifiedKey:
    """Client certificate (new P-256 key), EKU clientAuth. vdno's client profile: the CN is the bench or
    officer id, one OU names the role (BENCH_ROLE or OFFICER_ROLE); role None leaves the OU out."""
    return _issue(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, None, now, days, role)


def client_common_name(certificate: x509.Certificate) -> str:
    """The bench id (CN) of a client certificate."""
    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise LabPkiError("client certificate must carry exactly one CN")
    return values[0].value
