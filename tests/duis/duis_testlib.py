"""Helpers shared by the DUIS tests and reusable by other suites: finding the shared DUIS folder (XSD,
samples, constructed examples), loading the DUIS 5.4 schema with xmlschema, validating documents.

Reuse from another test folder: put tests/duis on sys.path in that folder's conftest.py
(`sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "duis"))`), then
`from duis_testlib import assert_valid_duis, require_duis_schema` and make a fixture returning
`require_duis_schema()` (tests/labdcc/conftest.py does this).
"""

from __future__ import annotations

import functools
import os
import warnings
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xmlschema
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent.parent
SCHEMA_FILE = Path("xsd") / "DUIS Schema V5.4.xsd"
# $VDNO_DUIS; `shared/duis` beside the checkout (the workspace layout); this project's machines' copy.
_CANDIDATES = (ROOT.parent / "shared" / "duis", Path("/work/shared/duis"))

SAMPLE_REQUEST = Path("samples") / "duis-templates-83c81ec" / "CS02bNOByNO_6.15.1_SUCCESS_REQUEST_DUIS.XML"
LOCAL_COMMAND_RESPONSE = Path("constructed") / "CS02bNOByNO_6.15.1_LOCALCOMMAND_RESPONSE_CONSTRUCTED.xml"
PRECOMMAND_RESPONSE = Path("constructed") / "CS02bNOByNO_6.15.1_PRECOMMAND_RESPONSE_CONSTRUCTED.xml"
SIGNED_PRECOMMAND_REQUEST = (
    Path("constructed") / "CS02bNOByNO_6.15.1_SIGNEDPRECOMMAND_REQUEST_CONSTRUCTED.xml"
)
RTDS_COMMAND = Path("6.15.1_CS02bNOByNO") / "CS02bNOByNO_6.15.1_SUCCESS_COMMAND_GBCS.HEX"

SR = "{http://www.dccinterface.co.uk/ServiceUserGateway}"


def duis_path() -> Path:
    """The shared DUIS folder (it holds xsd/DUIS Schema V5.4.xsd); the first candidate when none is there."""
    override = os.environ.get("VDNO_DUIS")
    if override:
        return Path(override)
    return next((p for p in _CANDIDATES if (p / SCHEMA_FILE).is_file()), _CANDIDATES[0])


# The same check as tests/conftest.py's require_part, re-implemented here: `import conftest` from a
# sub-folder's conftest (or from this module) yields whichever conftest pytest imported last, not the
# root one.
def require_part(what: str, available: bool, how: str) -> None:
    """Fail in CI, skip loudly elsewhere, when a real part the test needs is missing."""
    if available:
        return
    message = f"{what} is not available: {how}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    warnings.warn(f"SKIPPING: {message}", stacklevel=2)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def require_duis_folder() -> Path:
    folder = duis_path()
    require_part(
        "the shared DUIS schema and samples", (folder / SCHEMA_FILE).is_file(), f"expected at {folder}"
    )
    return folder


@functools.cache
def load_duis_schema(folder: Path) -> xmlschema.XMLSchema:
    """DUIS Schema V5.4.xsd (with the MMC and xmldsig schemas it imports), loaded once per process."""
    return xmlschema.XMLSchema(str(folder / SCHEMA_FILE))


def require_duis_schema() -> xmlschema.XMLSchema:
    """The DUIS 5.4 schema, or a loud skip (a failure when CI=true) when the shared folder is missing."""
    return load_duis_schema(require_duis_folder())


def validation_errors(schema: xmlschema.XMLSchema, xml_bytes: bytes) -> list[str]:
    return [str(error.reason or error) for error in schema.iter_errors(xml_bytes.decode("utf-8"))]


def assert_valid_duis(schema: xmlschema.XMLSchema, xml_bytes: bytes) -> None:
    """AssertionError listing the schema's complaints unless xml_bytes is a valid DUIS 5.4 document."""
    errors = validation_errors(schema, xml_bytes)
    assert not errors, "not valid DUIS 5.4: " + "; ".join(errors)


def tree_differences(a: ET.Element, b: ET.Element, path: str = "") -> list[str]:
    """Differences between two element trees: tags, attributes, stripped text, children in order."""
    here = f"{path}/{a.tag.replace(SR, 'sr:')}"
    if a.tag != b.tag:
        return [f"{here}: tag {a.tag} != {b.tag}"]
    found = []
    if a.attrib != b.attrib:
        found.append(f"{here}: attributes {a.attrib} != {b.attrib}")
    if (a.text or "").strip() != (b.text or "").strip():
        found.append(f"{here}: text {(a.text or '').strip()[:40]!r} != {(b.text or '').strip()[:40]!r}")
    if len(a) != len(b):
        found.append(f"{here}: {len(a)} children != {len(b)}")
    for x, y in zip(a, b, strict=False):
        found.extend(tree_differences(x, y, here))
    return found


def make_certificate(common_name: str = "duis-test", days: int = 365) -> bytes:
    """A small self-signed P-256 certificate (DER): any X.509 certificate will do for the codec."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)
