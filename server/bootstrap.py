"""`vdno-server init`: make the embedded default's state folder. Idempotent: a second run changes nothing
and says so. Holds: SoftHSM token with the vanilla keys, the lab SMKI hierarchy, vanilla certificates
issued from HSM-signed CSRs, 14 lab area DNO credential sets, mTLS certificates, the database, config."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from labpki.hierarchy import LabHierarchy
from labpki.smki import (
    CertifiedKey,
    KeyUsageName,
    issue_from_csr,
    issue_organisation_certificate,
    new_p256_key,
)
from labpki.store import (
    atomic_write,
    export_keystore,
    read_certificate,
    read_certified_key,
    write_certificate,
    write_certified_key,
)
from labpki.tls import issue_client_certificate, issue_server_certificate
from server.config import ConfigError
from server.domain.values import AREA_NAMES, Area, GenerationStatus, VanillaGeneration
from server.hsm.keys import ensure_keypair, sign_csr
from server.hsm.softhsm import ensure_softhsm_token
from server.hsm.token import open_token_session
from server.hsm.uri import Pkcs11Uri
from server.store.sql import open_store

TOKEN_LABEL = "vdno"
NETWORK_OPERATOR_ROLE = 3
BOOTSTRAP_ACTOR = "bootstrap"


def vanilla_entity_id(generation: int) -> bytes:
    """Lab entity id of vanilla generation g: 'VDNO' 00 00 00 g."""
    return b"VDNO\x00\x00\x00" + bytes([generation])


def area_entity_id(area_id: int) -> bytes:
    """Lab entity id of the test DNO of an area: 'LAB' 00 00 03 00 <area>."""
    return b"LAB\x00\x00\x03" + area_id.to_bytes(2, "big")


@dataclass
class BootstrapReport:
    changes: list[str] = field(default_factory=list)

    def did(self, what: str) -> None:
        self.changes.append(what)


def _secret(path: Path, report: BootstrapReport) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (value + "\n").encode(), mode=0o600)
    report.did(f"generated {path.name}")
    return value


def _key_uri(label: str) -> str:
    return str(Pkcs11Uri(token=TOKEN_LABEL, object=label, type="private"))


def _certify_vanilla(
    state: Path, pki: LabHierarchy, generation: int, report: BootstrapReport, pin: str, module: Path
) -> tuple[VanillaGeneration, list[x509.Certificate]]:
    """The generation's DS and KA keys made in the token and certified from CSRs the token signed."""
    entity = vanilla_entity_id(generation)
    usages: tuple[tuple[KeyUsageName, int, str], ...] = (("ds", 1, ""), ("ka", 2, " KA"))
    certificates: list[x509.Certificate] = []
    with open_token_session(module, TOKEN_LABEL, pin) as session:
        for usage, key_number, name_suffix in usages:
            label = f"vanilla-g{generation}-{usage}"
            pair = ensure_keypair(session, label, bytes([generation, key_number]))
            if pair.created:
                report.did(f"generated key {label} in the token")
            path = state / "pki" / f"{label}.pem"
            if path.exists():
                cert = read_certificate(path)
            else:
                subject = [("2.5.4.3", f"VDNO vanilla g{generation}{name_suffix}")]
                csr = sign_csr(session, subject, label=label)
                cert = issue_from_csr(pki.issuing_ca, csr, entity, NETWORK_OPERATOR_ROLE, usage)
                write_certificate(path, cert)
                report.did(f"issued {label} certificate from an HSM-signed CSR")
            # The token's public key must be the certified one (a re-made token would not match).
            if cert.public_key() != pair.public_key:
                raise ConfigError(
                    f"{path} does not certify the token key {label}; the state folder is inconsistent"
                )
            certificates.append(cert)
    ds, ka = certificates
    vanilla = VanillaGeneration(
        generation=generation,
        entity_id=entity,
        ds_key_uri=_key_uri(f"vanilla-g{generation}-ds"),
        ka_key_uri=_key_uri(f"vanilla-g{generation}-ka"),
        ds_certificate=ds.public_bytes(Encoding.DER),
        ka_certificate=ka.public_bytes(Encoding.DER),
        status=GenerationStatus.ACTIVE,
    )
    return vanilla, certificates


def _area_credentials(
    state: Path, pki: LabHierarchy, area_id: int, report: BootstrapReport
) -> tuple[Area, list[CertifiedKey]]:
    folder = state / "areas"
    credentials: list[CertifiedKey] = []
    usage: KeyUsageName
    for usage in ("ds", "ka"):
        stem = f"area-{area_id}-{usage}"
        if (folder / f"{stem}.pem").exists():
            credentials.append(read_certified_key(folder, stem))
            continue
        key = new_p256_key()
        cert = issue_organisation_certificate(
            pki.issuing_ca,
            key.public_key(),
            area_entity_id(area_id),
            NETWORK_OPERATOR_ROLE,
            usage,
            common_name=f"LAB DNO {AREA_NAMES[area_id].upper()}"[:64],
        )
        write_certified_key(folder, stem, CertifiedKey(cert, key))
        credentials.append(CertifiedKey(cert, key))
        report.did(f"issued test DNO {usage.upper()} credentials for area {area_id}")
    ds, ka = (c.certificate for c in credentials)
    area = Area(
        area_id=area_id,
        name=AREA_NAMES[area_id],
        entity_id=area_entity_id(area_id),
        ds_certificate=ds.public_bytes(Encoding.DER),
        ka_certificate=ka.public_bytes(Encoding.DER),
    )
    return area, credentials


CONFIG_TEMPLATE = """\
# vdno-server configuration for the embedded default (made by `vdno-server init`).
[server]
listen = "127.0.0.1:50051"
processes = 1
threads = 16
log_level = "info"

[database]
url = "sqlite:///vdno.db"

[tls]
server_certificate = "tls/server.pem"
server_key = "tls/server.key"
client_ca = "pki/tls-ca.pem"

[hsm]
module = "{module}"
token_label = "{token}"
pin_file = "secrets/user.pin"
pin_env = "VDNO_HSM_PIN"
softhsm_conf = "softhsm2.conf"

[trust]
root_ca = "pki/root-ca.pem"
issuing_ca = "pki/issuing-ca.pem"
device_ca = "pki/device-ca.pem"
"""


def initialise_state(
    state: Path, benches: tuple[str, ...] = ("bench-01",), database_url: str | None = None
) -> None:
    """database_url: register areas, generation and benches there instead of the state's SQLite file
    (e.g. PostgreSQL); config.toml still names the SQLite file, override it with VDNO_DATABASE_URL."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    report = BootstrapReport()
    user_pin = _secret(state / "secrets" / "user.pin", report)
    so_pin = _secret(state / "secrets" / "so.pin", report)
    token = ensure_softhsm_token(state, TOKEN_LABEL, user_pin, so_pin)
    if token.created:
        report.did(f"initialised SoftHSM token {TOKEN_LABEL!r} in {token.token_dir}")
    pki_folder = state / "pki"
    existed = LabHierarchy.exists(pki_folder)
    pki = LabHierarchy.load_or_create(pki_folder)
    if not existed:
        report.did("created the lab SMKI hierarchy (root, issuing CA, device CA) and the TLS CA")
    generation, vanilla_certificates = _certify_vanilla(state, pki, 1, report, user_pin, token.module_path)
    area_credentials = [_area_credentials(state, pki, area_id, report) for area_id in AREA_NAMES]
    areas = [area for area, _ in area_credentials]

    tls = state / "tls"
    if not (tls / "server.pem").exists():
        write_certified_key(tls, "server", issue_server_certificate(pki.tls_ca))
        report.did("issued the server TLS certificate")
    for bench in benches:
        if not (tls / f"{bench}.pem").exists():
            write_certified_key(tls, bench, issue_client_certificate(pki.tls_ca, bench))
            report.did(f"issued the client certificate of {bench}")

    config = state / "config.toml"
    if not config.exists():
        atomic_write(
            config, CONFIG_TEMPLATE.format(module=token.module_path, token=TOKEN_LABEL).encode(), mode=0o644
        )
        report.did("wrote config.toml")

    store = open_store(database_url or f"sqlite:///{state / 'vdno.db'}")
    try:
        for area in areas:
            if store.upsert_area(area, BOOTSTRAP_ACTOR):
                report.did(f"registered area {area.area_id} ({area.name})")
        if store.add_generation(generation, BOOTSTRAP_ACTOR):
            report.did("registered vanilla generation 1 as active")
        for bench in benches:
            if store.enroll_bench(bench, BOOTSTRAP_ACTOR):
                report.did(f"enrolled {bench}")
    finally:
        store.close()

    # Rewritten each run with identical content.
    export_keystore(
        state / "keystore",
        [*vanilla_certificates, *(c for _, credentials in area_credentials for c in credentials)],
        include_keys=True,
    )
    if report.changes:
        print(f"initialised {state}:")
        for change in report.changes:
            print(f"  - {change}")
    else:
        print(f"{state} is already initialised; nothing changed")
