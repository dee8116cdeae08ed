"""The whole lab PKI: SMKI root, issuing CA, device CA and the (separate) TLS CA; made once, reloaded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from vdno.labpki.errors import LabPkiError
from vdno.labpki.smki import CertifiedKey, make_device_ca, make_issuing_ca, make_root_ca
from vdno.labpki.store import read_certified_key, write_certified_key
from vdno.labpki.tls import make_tls_ca

STEMS = ("root-ca", "issuing-ca", "device-ca", "tls-ca")


@dataclass(frozen=True)
class LabHierarchy:
    root: CertifiedKey
    issuing_ca: CertifiedKey
    device_ca: CertifiedKey
    tls_ca: CertifiedKey

    @classmethod
    def create(cls, now: datetime | None = None) -> LabHierarchy:
        root = make_root_ca(now=now)
        return cls(
            root=root,
            issuing_ca=make_issuing_ca(root, now=now),
            device_ca=make_device_ca(root, now=now),
            tls_ca=make_tls_ca(now=now),
        )

    def _parts(self) -> tuple[CertifiedKey, ...]:
        return (self.root, self.issuing_ca, self.device_ca, self.tls_ca)

    def save(self, folder: Path) -> None:
        """Write `<stem>.pem` + `<stem>.key` for root-ca, issuing-ca, device-ca, tls-ca."""
        for stem, part in zip(STEMS, self._parts(), strict=True):
            write_certified_key(Path(folder), stem, part)

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return all((Path(folder) / f"{stem}.pem").is_file() for stem in STEMS)

    @classmethod
    def load(cls, folder: Path) -> LabHierarchy:
        """Read a saved hierarchy (all keys required) and check that the SMKI CAs chain to the root."""
        root, issuing_ca, device_ca, tls_ca = (read_certified_key(Path(folder), stem) for stem in STEMS)
        for child in (issuing_ca, device_ca):
            try:
                child.certificate.verify_directly_issued_by(root.certificate)
            except (InvalidSignature, ValueError, TypeError) as exc:
                raise LabPkiError(
                    f"{folder}: {child.certificate.subject.rfc4514_string()} is not issued "
                    f"by the saved root: {exc}"
                ) from exc
        return cls(root=root, issuing_ca=issuing_ca, device_ca=device_ca, tls_ca=tls_ca)

    @classmethod
    def load_or_create(cls, folder: Path, now: datetime | None = None) -> LabHierarchy:
        """Idempotent bootstrap: load the hierarchy in folder, or create and save it when none is there.
        LabPkiError when only some of its files are present (rather than silently replacing them)."""
        folder = Path(folder)
        files = [folder / f"{stem}.{ext}" for stem in STEMS for ext in ("pem", "key")]
        present = [path.name for path in files if path.exists()]
        if not present:
            hierarchy = cls.create(now)
            hierarchy.save(folder)
            return hierarchy
        if len(present) != len(files):
            raise LabPkiError(
                f"{folder} holds a partial lab hierarchy ({', '.join(present)}); remove it first"
            )
        return cls.load(folder)
