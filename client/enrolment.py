"""A bench's own mTLS key and its certificate request: the key is made and kept at the bench; officers enrol
the bench from the request (vdno-admin benches enrol) and the custodian returns its certificate."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vdno.client.errors import BenchError

BENCH_ROLE = "vdno-bench"
_BENCH_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class EnrolmentError(BenchError):
    """The key or the request cannot be made; the message says why."""


def make_key_and_request(bench_id: str, folder: Path) -> tuple[Path, Path]:
    """<folder>/<bench>.key (PKCS#8 PEM, mode 0600) and <folder>/<bench>.csr (PKCS#10 PEM: CN = bench id,
    OU = vdno-bench, signed with the new key). EnrolmentError when the id is malformed or the key exists."""
    if not _BENCH_ID.match(bench_id):
        raise EnrolmentError("--bench must be 1-64 characters of letters, digits and . _ -")
    folder.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = folder / f"{bench_id}.key", folder / f"{bench_id}.csr"
    if key_path.exists():
        raise EnrolmentError(f"{key_path} exists: a bench keeps its key; remove it first to make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, bench_id),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, BENCH_ROLE),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    csr_path.write_bytes(request.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path
