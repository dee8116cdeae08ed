"""`vdno-server init`: make the embedded default's state folder. Idempotent: a second run changes nothing
and says so. Holds: SoftHSM token with the vanilla keys, the lab SMKI hierarchy, vanilla certificates
issued from HSM-signed CSRs, mTLS certificates for benches and officers, the database, config. The area DNO
credential sets are registered from the certificates in `<state>/areas/` (the custodian never holds DNO
keys; in the lab, `vdno-labdcc init` makes them)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.dno_areas import DNO_AREAS
from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.smki import load_certificate
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import CertifiedKey, KeyUsageName, issue_from_csr
from vdno.labpki.store import (
    atomic_write,
    export_keystore,
    read_certificate,
    write_certificate,
    write_certified_key,
)
from vdno.labpki.tls import BENCH_ROLE, OFFICER_ROLE, issue_client_certificate, issue_server_certificate
from vdno.server.audit_bootstrap import ensure_audit_config, ensure_audit_key
from vdno.server.config import ConfigError
from vdno.server.domain.values import Area, GenerationStatus, OfficerStatus, VanillaGeneration
from vdno.server.hsm.keys import ensure_keypair, sign_csr
from vdno.server.hsm.softhsm import ensure_softhsm_token
from vdno.server.hsm.token import open_token_session
from vdno.server.hsm.uri import Pkcs11Uri
from vdno.server.store.sql import open_store

TOKEN_LABEL = "vdno"
DEFAULT_LISTEN = "127.0.0.1:50051"
NETWORK_OPERATOR_ROLE = 3
BOOTSTRAP_ACTOR = "bootstrap"


def vanilla_entity_id(generation: int) -> bytes:
    """Lab entity id of vanilla generation g: 'VDNO' 00 00 00 g."""
    return b"VDNO\x00\x00\x00" + bytes([generation])


@dataclass(frozen=True)
class BenchParts:
    """What `init` writes into each new bench settings file for the bench's own parts (None: a commented
    placeholder): its device transport, HOST:PORT, and the DCC gateway adding the ACB-SMD MAC, a URL."""

    sim: str | None = None
    dcc: str | None = None


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


def _registered_area(areas_folder: Path, area_id: int) -> Area | None:
    """The area's DNO credential set from `area-<id>-ds.pem` and `-ka.pem` in `areas_folder` (certificates
    only: the custodian never holds DNO keys), or None when the area has no files there. ConfigError when a
    file is unusable or names the wrong party."""
    paths = [areas_folder / f"area-{area_id}-{usage}.pem" for usage in ("ds", "ka")]
    if not any(path.exists() for path in paths):
        return None
    certificates = []
    for path, usage in zip(paths, (KeyUsage.DIGITAL_SIGNATURE, KeyUsage.KEY_AGREEMENT), strict=True):
        try:
            cert = load_certificate(path.read_bytes())
        except (OSError, GbcsError) as exc:
            raise ConfigError(f"area {area_id}: {path} is not a usable certificate: {exc}") from exc
        if cert.role != NETWORK_OPERATOR_ROLE or cert.key_usage is not usage:
            raise ConfigError(f"area {area_id}: {path} is not a network-operator {usage.name} certificate")
        certificates.append(cert)
    ds, ka = certificates
    if ds.entity_id != ka.entity_id:
        raise ConfigError(f"area {area_id}: the DS and KA certificates name different entities")
    return Area(area_id, DNO_AREAS[area_id], ds.entity_id, ds.der, ka.der)


CONFIG_TEMPLATE = """\
# vdno-server configuration for the embedded default (made by `vdno-server init`).
[server]
listen = "{listen}"
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

[custody]
approvals_required = 1          # approvals by officers other than the requester (1: two-person control)
approval_ttl_hours = 24         # a request not approved in time expires
execution_window_minutes = 60   # an approved request not executed in time expires
destroy_grace_days = 7          # 7-30 days from scheduling a generation's destruction to deleting its keys
expiry_warning_days = 90        # warn this long before a signing generation's certificates expire

[enrolment]
client_ca_key = "pki/tls-ca.key"  # lab: the client CA key, for benches enrolled from a CSR
"""


CLIENT_TEMPLATE = """\
# vdno client settings for {name} (written by `vdno-server init`); paths are relative to this file.
# Use: `{program} --config THIS_FILE ...`, or set {config_variable} to its path and leave --config out.
# The environment overrides a key (VDNO_SERVER, VDNO_SERVER_NAME{more_variables}); a flag overrides both.
[{section}]
# HOST:PORT of the custodian, and the name its TLS certificate holds
server = "{server}"
server_name = "localhost"
# the CA of the server's certificate; this {role}'s client certificate (CN {name}, OU vdno-{role}) and key
ca = "../pki/tls-ca.pem"
cert = "../tls/{name}.pem"
key = "../tls/{name}.key"
{bench_keys}"""
# A bench's own parts: its device transport (HOST:PORT) and the DCC gateway that adds the ACB-SMD MAC (URL).
BENCH_KEYS = """\
# this bench's device transport (HOST:PORT) and the DCC gateway that adds the ACB-SMD MAC (URL); in the lab,
# where `vdno-sim serve` and `vdno-labdcc serve` listen
{sim}
{dcc}
# save_commands = "../commands"  # keep each applied command as <device>-<counter>.hex
"""


def _client(
    state: Path,
    pki: LabHierarchy,
    name: str,
    role: str,
    section: str,
    report: BootstrapReport,
    bench_parts: BenchParts | None = None,
) -> None:
    """The client's mTLS certificate (CN = its id, OU = its role) and its settings file, once."""
    tls = state / "tls"
    if not (tls / f"{name}.pem").exists():
        write_certified_key(tls, name, issue_client_certificate(pki.tls_ca, name, role=role))
        report.did(f"issued the client certificate of {name} ({role})")
    settings = state / "clients" / f"{name}.toml"
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        bench = section == "bench"
        parts = bench_parts or BenchParts()
        text = CLIENT_TEMPLATE.format(
            name=name,
            section=section,
            server=DEFAULT_LISTEN,
            program="vdno-bench" if bench else "vdno-admin",
            config_variable="VDNO_BENCH_CONFIG" if bench else "VDNO_ADMIN_CONFIG",
            more_variables=", VDNO_SIM, VDNO_DCC" if bench else "",
            role="bench" if bench else "officer",
            bench_keys=BENCH_KEYS.format(
                sim=f'sim = "{parts.sim}"' if parts.sim else '# sim = "127.0.0.1:PORT"',
                dcc=f'dcc = "{parts.dcc}"' if parts.dcc else '# dcc = "http://127.0.0.1:PORT/duis"',
            )
            if bench
            else "",
        )
        atomic_write(settings, text.encode(), mode=0o644)
        report.did(f"wrote clients/{name}.toml")


def initialise_state(
    state: Path,
    benches: tuple[str, ...] = ("bench-01",),
    database_url: str | None = None,
    officers: tuple[str, ...] = ("officer-01", "officer-02"),
    areas_folder: Path | None = None,
    bench_parts: BenchParts | None = None,
    show: bool = True,
) -> list[str]:
    """What it changed (empty: nothing), also printed unless show is False.

    database_url: register areas, generation, benches and officers there instead of the state's SQLite file
    (e.g. PostgreSQL); config.toml still names the SQLite file, override it with VDNO_DATABASE_URL. A bench or
    officer already known to the database (even revoked) is left as it is. bench_parts: written into the
    settings file of each bench that has none yet."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    areas_folder = (areas_folder or state / "areas").resolve()
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
    audit_key_event = ensure_audit_key(
        state, token.module_path, TOKEN_LABEL, user_pin, BOOTSTRAP_ACTOR, report.did
    )
    areas = [area for area in (_registered_area(areas_folder, a) for a in DNO_AREAS) if area is not None]
    if not areas:
        report.did(
            f"found no area DNO certificates in {areas_folder} (area-<id>-ds.pem, -ka.pem): no area is "
            "registered (in the lab, `vdno-labdcc init --state` makes them)"
        )

    tls = state / "tls"
    if not (tls / "server.pem").exists():
        write_certified_key(tls, "server", issue_server_certificate(pki.tls_ca))
        report.did("issued the server TLS certificate")
    for bench in benches:
        _client(state, pki, bench, BENCH_ROLE, "bench", report, bench_parts)
    for officer in officers:
        _client(state, pki, officer, OFFICER_ROLE, "admin", report)

    config = state / "config.toml"
    if not config.exists():
        atomic_write(
            config,
            CONFIG_TEMPLATE.format(
                module=token.module_path, token=TOKEN_LABEL, listen=DEFAULT_LISTEN
            ).encode(),
            mode=0o644,
        )
        report.did("wrote config.toml")
    ensure_audit_config(config, TOKEN_LABEL, report.did)  # also completes a config made before [audit]

    store = open_store(database_url or f"sqlite:///{state / 'vdno.db'}")
    try:
        if audit_key_event is not None:
            store.record_event(audit_key_event)
        for area in areas:
            if store.upsert_area(area, BOOTSTRAP_ACTOR):
                report.did(f"registered area {area.area_id} ({area.name})")
        if store.add_generation(generation, BOOTSTRAP_ACTOR):
            report.did("registered vanilla generation 1 as active")
        for bench in benches:
            if store.get_bench(bench) is None and store.enroll_bench(bench, BOOTSTRAP_ACTOR):
                report.did(f"enrolled {bench}")
        for officer in officers:
            if store.get_officer(officer) is None and store.set_officer(
                officer, OfficerStatus.ENROLLED, BOOTSTRAP_ACTOR
            ):
                report.did(f"enrolled officer {officer}")
    finally:
        store.close()

    # Rewritten each run with identical content; the vanilla keys stay in the token.
    export_keystore(state / "keystore", [CertifiedKey(c, None) for c in vanilla_certificates])
    if not show:
        return list(report.changes)
    if report.changes:
        print(f"initialised {state}:")
        for change in report.changes:
            print(f"  - {change}")
    else:
        print(f"{state} is already initialised; nothing changed")
    return list(report.changes)
