"""Who is calling: the identity and role in the client certificate that mutual TLS verified.

vdno's client certificate profile (docs and proto/vdno/v1/custodian.proto): the subject has exactly one CN,
the bench or officer id, and exactly one OU naming the role: "vdno-bench" or "vdno-officer". The TLS layer
has already checked the chain to the configured client CA; this module reads the verified certificate that
gRPC reports (auth context property `x509_pem_cert`) and refuses anything else as UNAUTHENTICATED."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from vdno.gbcs.errors import CertificateError
from vdno.gbcs.smki import read_x509_certificate
from vdno.server.domain.errors import Unauthenticated

MAX_REMEMBERED_SUBJECTS = 4096


class Role(StrEnum):
    BENCH = "vdno-bench"
    OFFICER = "vdno-officer"


@dataclass(frozen=True)
class Caller:
    name: str  # the CN: bench id or officer id
    role: Role
    certificate_sha256: str  # of the verified client certificate (DER): enrolment may pin it

    @property
    def actor(self) -> str:
        """How the audit log names the caller: bench:<id> or officer:<id>."""
        return f"{'bench' if self.role is Role.BENCH else 'officer'}:{self.name}"


def caller_from_certificate(pem: bytes) -> Caller:
    """The caller a verified client certificate (PEM, as the TLS layer reports it) names. Unauthenticated,
    saying why, otherwise."""
    try:
        certificate = read_x509_certificate(pem)
    except CertificateError:
        raise Unauthenticated("the client certificate cannot be read") from None
    name = certificate.subject
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) != 1:
        raise Unauthenticated(
            "the client certificate must carry exactly one CN (the bench or officer id), "
            f"not {len(common_names)}"
        )
    known = {role.value for role in Role}
    units = name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    roles = [str(a.value) for a in units if a.value in known]
    if len(roles) != 1:
        raise Unauthenticated(
            "the client certificate must carry exactly one role OU, vdno-bench or vdno-officer"
        )
    cn = common_names[0].value
    text = cn if isinstance(cn, str) else cn.decode("utf-8", "replace")
    fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
    return Caller(text, Role(roles[0]), fingerprint)


class CallerCache:
    """caller_from_certificate, remembered per certificate (a client presents the same one on every call)."""

    def __init__(self) -> None:
        self._known: dict[bytes, Caller | Unauthenticated] = {}
        self._lock = threading.Lock()

    def caller(self, pem: bytes) -> Caller:
        found = self._known.get(pem)
        if found is None:
            try:
                found = caller_from_certificate(pem)
            except Unauthenticated as refused:
                found = refused
            with self._lock:
                if len(self._known) >= MAX_REMEMBERED_SUBJECTS:
                    self._known.clear()
                self._known[pem] = found
        if isinstance(found, Unauthenticated):
            raise Unauthenticated(str(found))
        return found
