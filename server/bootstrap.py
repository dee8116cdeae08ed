"""`vdno-server init`: make the embedded default's state folder. Idempotent: a second run changes nothing
and says so. Holds: SoftHSM token with the vanilla keys, the lab SMKI hierarchy, vanilla certificates
issued from HSM-signed CSRs, 14 lab area DNO credential sets, mTLS certificates, the database, config."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from labpki.hierarchy import LabHierarchy
from labpki.smki import CertifiedKey, issue_from_csr, issue_organisation_certificate, new_p256_key
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
from server.hsm.keys import ensure_keypair, public_key_of, sign_csr
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
    state: Path
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
) -> VanillaGeneration:
    entity = vanilla_entity_id(generation)
    folder = state / "pki"
    ds_label, ka_label = f"vanilla-g{generation}-ds", f"vanilla-g{generation}-ka"
    with open_token_session(module, TOKEN_LABEL, pin) as session:
        for label, key_id in ((ds_label, bytes([generation, 1])), (ka_label, bytes([generation, 2]))):
            if ensure_keypair(session, label, key_id).created:
                report.did(f"generated key {label} in the token")
        ds_path, ka_path = folder / f"{ds_label}.pem", folder / f"{ka_label}.pem"
        if not ds_path.exists():
            csr = sign_csr(session, [("2.5.4.3", f"VDNO vanilla g{generation}")], label=ds_label)
            cert = issue_from_csr(pki.issuing_ca, csr, entity, NETWORK_OPERATOR_ROLE, "ds")
            write_certificate(ds_path, cert)
            report.did(f"issued {ds_label} certificate from an HSM-signed CSR")
        if not ka_path.exists():
            csr = sign_csr(session, [("2.5.4.3", f"VDNO vanilla g{generation} KA")], label=ka_label)
            cert = issue_from_csr(pki.issuing_ca, csr, entity, NETWORK_OPERATOR_ROLE, "ka")
            write_certificate(ka_path, cert)
            report.did(f"issued {ka_label} certificate from an HSM-signed CSR")
        # The token's public keys must be the certified ones (a re-made token would not match).
        for label, path in ((ds_label, ds_path), (ka_label, ka_path)):
            if read_certificate(path).public_key() != public_key_of(session, label=label):
                raise ConfigError(
                    f"{path} does not certify the token key {label}; the state folder is inconsistent"
                )
    return VanillaGeneration(
        generation=generation,
        entity_id=entity,
        ds_key_uri=_key_uri(ds_label),
        ka_key_uri=_key_uri(ka_label),
        ds_certificate=read_certificate(ds_path).public_bytes(Encoding.DER),
        ka_certificate=read_certificate(ka_path).public_bytes(Encoding.DER),
        status=GenerationStatus.ACTIVE,
    )


def _area_credentials(state: Path, pki: LabHierarchy, area_id: int, report: BootstrapReport) -> Area:
    folder = state / "areas"
    certs: dict[str, x509.Certificate] = {}
    for usage in ("ds", "ka"):
        stem = f"area-{area_id}-{usage}"
        if not (folder / f"{stem}.pem").exists():
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
            report.did(f"issued test DNO {usage.upper()} credentials for area {area_id}")
        certs[usage] = read_certified_key(folder, stem).certificate
    return Area(
        area_id=area_id,
        name=AREA_NAMES[area_id],
        entity_id=area_entity_id(area_id),
        ds_certificate=certs["ds"].public_bytes(Encoding.DER),
        ka_certificate=certs["ka"].public_bytes(Encoding.DER),
    )


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
    state: Path,
    benches: tuple[str, ...] = ("bench-01",),
    say: Callable[[str], None] = print,
    database_url: str | None = None,
) -> BootstrapReport:
    """database_url: register areas, generation and benches there instead of the state's SQLite file
    (e.g. PostgreSQL); config.toml still names the SQLite file, override it with VDNO_DATABASE_URL."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    report = BootstrapReport(state)
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
    generation = _certify_vanilla(state, pki, 1, report, user_pin, token.module_path)
    areas = [_area_credentials(state, pki, area_id, report) for area_id in AREA_NAMES]

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
        [
            x509.load_der_x509_certificate(generation.ds_certificate),
            x509.load_der_x509_certificate(generation.ka_certificate),
        ]
        + [read_certified_key(state / "areas", f"area-{a.area_id}-{u}") for a in areas for u in ("ds", "ka")],
        include_keys=True,
    )
    if report.changes:
        say(f"initialised {state}:")
        for change in report.changes:
            say(f"  - {change}")
    else:
        say(f"{state} is already initialised; nothing changed")
    return report
