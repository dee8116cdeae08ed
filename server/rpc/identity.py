"""Who is calling: the identity and role in the client certificate that mutual TLS verified.

vdno's client certificate profile (docs and proto/vdno/v1/custodian.proto): the subject has exactly one CN,
the bench or officer id, and exactly one OU naming the role: "vdno-bench" or "vdno-officer". The TLS layer
has already checked the chain to the configured client CA; this module reads the verified subject that
gRPC reports (auth context property `x509_subject`, RFC 4514) and refuses anything else as UNAUTHENTICATED."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from server.domain.errors import Unauthenticated

MAX_REMEMBERED_SUBJECTS = 4096


class Role(StrEnum):
    BENCH = "vdno-bench"
    OFFICER = "vdno-officer"


@dataclass(frozen=True)
class Caller:
    name: str  # the CN: bench id or officer id
    role: Role

    @property
    def actor(self) -> str:
        """How the audit log names the caller: bench:<id> or officer:<id>."""
        return f"{'bench' if self.role is Role.BENCH else 'officer'}:{self.name}"


def caller_from_subject(subject: str) -> Caller:
    """The caller a verified certificate subject names. Unauthenticated, saying why, otherwise."""
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:
        raise Unauthenticated("the client certificate subject cannot be read") from None
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
    return Caller(text, Role(roles[0]))


class CallerCache:
    """caller_from_subject, remembered per subject string (subjects repeat on every call of a client)."""

    def __init__(self) -> None:
        self._known: dict[str, Caller | Unauthenticated] = {}
        self._lock = threading.Lock()

    def caller(self, subject: str) -> Caller:
        found = self._known.get(subject)
        if found is None:
            try:
                found = caller_from_subject(subject)
            except Unauthenticated as refused:
                found = refused
            with self._lock:
                if len(self._known) >= MAX_REMEMBERED_SUBJECTS:
                    self._known.clear()
                self._known[subject] = found
        if isinstance(found, Unauthenticated):
            raise Unauthenticated(str(found))
        return found
