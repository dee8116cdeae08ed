"""Helpers of the integration tests: a deployed service (state folder + real `vdno-server serve` process +
its database), fresh simulated vanilla meters, direct reads of the service's database, raw RPCs.

Nothing here loads the PKCS#11 module: SoftHSM reads its configuration once per process, so only the
server subprocess (and one-off subprocesses, see read_key_attributes) ever touch the token."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import ServerProcess, pb, run_init
from sqlalchemy import Engine, create_engine, select, text

from scripts.lab_tray import InProcessTransport, tray_device_id, vanilla_tray_profiles
from vdno.admin.api import CustodyClient
from vdno.client.api import BenchClient
from vdno.client.errors import ServiceError
from vdno.client.handout import MeterReading, read_meter
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    ReplacementOutcome,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode, decode_message
from vdno.gbcs.signature import sign_apdu
from vdno.labdcc.dcc import LabDcc
from vdno.labdcc.parties import area_entity_id
from vdno.labdcc.web import DuisHttpServer
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import issue_from_csr
from vdno.labpki.store import export_keystore, read_certificate, read_certified_key
from vdno.server.bootstrap import vanilla_entity_id
from vdno.server.observability import FLUSH_INTERVAL
from vdno.server.store.engine import make_engine
from vdno.server.store.schema import audit_log, issuances
from vdno.server.store.sql import SqlCustodyStore
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.lab import (
    COMMISSIONED_SEQ_NUMBER,
    LabCredentialSet,
    export_device_credentials,
    lab_meter_profile,
)
from vdno.simulator.profile import NO_DS_CELL, NO_KA_CELL
from vdno.v1 import custodian_pb2_grpc as pb_grpc

PYTHON = sys.executable
BIN = Path(PYTHON).parent
BENCHES = ("bench-01", "bench-02")
VANILLA_G1_ENTITY = vanilla_entity_id(1)


def ski_of(der: bytes) -> bytes:
    """subjectKeyIdentifier of a certificate, read with `cryptography` (not our codec)."""
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def der_of(path: Path) -> bytes:
    return read_certificate(path).public_bytes(Encoding.DER)


def new_request_id() -> str:
    return f"it-{uuid.uuid4().hex}"


# -- databases ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A throwaway schema on the machine's PostgreSQL; yields a SQLAlchemy URL whose search_path is it."""
    base = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"it_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# -- the deployed service -----------------------------------------------------------------------------


@dataclass
class Deployment:
    """One state folder, its database and the running `vdno-server serve` process."""

    state: Path
    backend: str  # sqlite | postgres
    database_url: str
    server: ServerProcess
    _next_meter: int = field(default=1)

    # paths and files of the state folder
    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def tls_ca(self) -> Path:
        return self.state / "pki" / "tls-ca.pem"

    def bench_cert(self, bench: str) -> Path:
        return self.state / "tls" / f"{bench}.pem"

    def bench_key(self, bench: str) -> Path:
        return self.state / "tls" / f"{bench}.key"

    def area_certificates(self, area_id: int) -> tuple[bytes, bytes]:
        """DER of the area DNO's DS and KA certificates as `init` wrote them."""
        folder = self.state / "areas"
        return der_of(folder / f"area-{area_id}-ds.pem"), der_of(folder / f"area-{area_id}-ka.pem")

    def vanilla_certificates(self, generation: int = 1) -> tuple[bytes, bytes]:
        folder = self.state / "pki"
        return (
            der_of(folder / f"vanilla-g{generation}-ds.pem"),
            der_of(folder / f"vanilla-g{generation}-ka.pem"),
        )

    @property
    def server_env(self) -> dict[str, str]:
        return {"VDNO_DATABASE_URL": self.database_url}

    # clients
    def client(self, bench: str = "bench-01", attempts: int = 1) -> BenchClient:
        return BenchClient(
            self.target,
            self.tls_ca.read_bytes(),
            self.bench_cert(bench).read_bytes(),
            self.bench_key(bench).read_bytes(),
            server_name_override="localhost",
            attempts=attempts,
        )

    def stub(
        self, bench: str = "bench-01", client_cert: tuple[bytes, bytes] | None = None
    ) -> tuple[grpc.Channel, pb_grpc.BenchServiceStub]:
        """A raw stub (status codes as gRPC reports them). client_cert = (key PEM, cert PEM)."""
        channel = self.server.channel(bench, client_cert)
        return channel, pb_grpc.BenchServiceStub(channel)

    # meters (as real meters, they accept a CS02b command only with DCC's ACB-SMD MAC)
    def meters(self, count: int) -> tuple[InProcessTransport, list[bytes]]:
        """`count` fresh vanilla meters (new device ids, keys and certificates) in-process."""
        profiles = vanilla_tray_profiles(self.state, count, first=self._next_meter)
        self._next_meter += count
        transport = InProcessTransport(profiles)
        return transport, [p.device_id for p in profiles]

    def commissioned_meters(self, areas: list[int]) -> tuple[InProcessTransport, list[bytes]]:
        """Fresh meters in service, one per entry of `areas`: their NO cells hold that area DNO's
        certificates, their NO seq number is COMMISSIONED_SEQ_NUMBER."""
        pki = LabHierarchy.load(self.state / "pki")
        acb_ka = read_certificate(self.state / "acb" / "acb-ka.pem")
        profiles = []
        for area in areas:
            ds, ka = (read_certificate(self.state / "areas" / f"area-{area}-{u}.pem") for u in ("ds", "ka"))
            holder = LabCredentialSet(area_entity_id(area), ds, ka)
            profiles.append(
                lab_meter_profile(
                    tray_device_id(self._next_meter),
                    pki.device_ca,
                    pki.root.certificate,
                    holder,
                    acb_ka,
                    COMMISSIONED_SEQ_NUMBER,
                )
            )
            self._next_meter += 1
        export_device_credentials(profiles, self.state / "keystore")
        return InProcessTransport(profiles), [p.device_id for p in profiles]

    @functools.cached_property
    def dcc(self) -> LabDcc:
        """The lab DCC (area DNOs, ACB) in-process: `dcc.local_command` is a bench's DccGateway."""
        return LabDcc(self.state)

    def mac(self, command: bytes, check: bool = True) -> bytes:
        """`command` as DCC delivers it: MAC-framed by the lab ACB (with check, only after the ACB's own
        checks of the KRP signature and addressing pass)."""
        device = decode_message(command).apdu.header.business_target_id
        return self.dcc.local_command(command, device) if check else self.dcc.acb.add_mac(command)

    @contextlib.contextmanager
    def dcc_server(self) -> Iterator[str]:
        """The lab DCC's DUIS endpoint on a free loopback port; yields its URL (for --dcc)."""
        server = DuisHttpServer(LabDcc(self.state), port=0)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()

    def officer(self, officer: str = "officer-01") -> CustodyClient:
        tls = self.state / "tls"
        return CustodyClient(
            self.target,
            self.tls_ca.read_bytes(),
            (tls / f"{officer}.pem").read_bytes(),
            (tls / f"{officer}.key").read_bytes(),
            server_name_override="localhost",
            attempts=1,
        )

    # the database, read directly
    @contextlib.contextmanager
    def store(self) -> Iterator[SqlCustodyStore]:
        store = SqlCustodyStore(make_engine(self.database_url))
        try:
            yield store
        finally:
            store.close()

    @contextlib.contextmanager
    def engine(self) -> Iterator[Engine]:
        engine = make_engine(self.database_url)
        try:
            yield engine
        finally:
            engine.dispose()

    def issuance_rows(self, bench: str | None = None, request_id: str | None = None) -> list[Any]:
        """Rows of the issuances table (optionally one bench / request id), by issuance_id."""
        query = select(issuances).order_by(issuances.c.issuance_id)
        if bench is not None:
            query = query.where(issuances.c.bench_id == bench)
        if request_id is not None:
            query = query.where(issuances.c.request_id == request_id)
        with self.engine() as engine, engine.connect() as conn:
            return list(conn.execute(query).all())

    def audit_events(self, event: str | None = None) -> list[Any]:
        query = select(audit_log).order_by(audit_log.c.seq)
        if event is not None:
            query = query.where(audit_log.c.event == event)
        with self.engine() as engine, engine.connect() as conn:
            return list(conn.execute(query).all())

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine() as engine, engine.begin() as conn:
            conn.execute(text(sql), params)

    # the server
    def restart(self) -> None:
        self.server.stop()
        self.server.start()

    def log_text(self) -> str:
        """The server log, once every line of the calls made so far is written (info lines are written
        every FLUSH_INTERVAL seconds)."""
        time.sleep(5 * FLUSH_INTERVAL)
        return self.server.log_path.read_text(errors="replace")

    def verify_audit(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "vdno-server"), "verify-audit", "--config", str(self.state / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.server_env},
            check=False,
        )


def deploy(
    state: Path,
    backend: str,
    database_url: str | None = None,
    prepare: Callable[[Deployment], None] | None = None,
) -> Deployment:
    """`vdno-server init` a state folder (seeding `database_url` when given, else state/vdno.db), run
    `prepare` on the database, then start `vdno-server serve` on a free port. Stop with .server.stop()."""
    run_init(state, BENCHES, database_url=database_url)
    url = database_url or f"sqlite:///{state / 'vdno.db'}"
    # GRPC_VERBOSITY=INFO: gRPC core logs TLS handshake failures (with their reason) to the server log.
    server = ServerProcess(state, extra_env={"VDNO_DATABASE_URL": url, "GRPC_VERBOSITY": "INFO"})
    deployment = Deployment(state=state, backend=backend, database_url=url, server=server)
    if prepare is not None:
        prepare(deployment)
    server.start()
    return deployment


# -- custody ------------------------------------------------------------------------------------------


def smki_certificate(state: Path, csr: bytes, entity_id: bytes, usage: str, role: int = 3) -> bytes:
    """What DCC's SMKI returns for a request (the lab issuing CA of the state folder): DER."""
    hierarchy = LabHierarchy.load(state / "pki")
    certificate = issue_from_csr(hierarchy.issuing_ca, csr, entity_id, role, usage)  # type: ignore[arg-type]
    export_keystore(state / "keystore", [certificate], include_keys=False)  # the SMKI inventory the ACB reads
    return certificate.public_bytes(Encoding.DER)


def approved(deployment: Deployment, request: dict[str, Any], approver: str = "officer-02") -> dict[str, Any]:
    """Another officer approves `request` (made by officer-01), then officer-01 executes it."""
    with deployment.officer(approver) as other:
        other.approve(int(request["request_id"]))
    with deployment.officer("officer-01") as officer:
        return officer.execute(int(request["request_id"]))


def certify_generation(deployment: Deployment, entity_id: bytes) -> int:
    """The whole ceremony for a new generation: keys in the token, CSRs, lab SMKI certificates, import."""
    with deployment.officer() as officer:
        created = officer.create_generation(entity_id.hex())
        number = int(created["generation"])
        ds, ka = (
            smki_certificate(deployment.state, officer.certificate_request(number, usage), entity_id, usage)
            for usage in ("ds", "ka")
        )
        officer.import_certificates(number, ds, ka)
    return number


def activate(deployment: Deployment, generation: int) -> dict[str, Any]:
    with deployment.officer() as officer:
        request = officer.request_generation_change(generation, "activate-generation", "test: activate")
    return approved(deployment, request)


# -- RPCs ---------------------------------------------------------------------------------------------


def hand_out_request(reading: MeterReading, device_id: bytes, area_id: int, request_id: str) -> Any:
    return pb.HandOutRequest(
        request_id=request_id,
        device_id=device_id.hex().upper(),
        area_id=area_id,
        device_certificate=reading.device_certificate,
        credentials_response=reading.credentials_response,
    )


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """Run a call that must fail; return its RpcError."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but had to be refused")


def request_command(
    deployment: Deployment,
    transport: InProcessTransport,
    device_id: bytes,
    area_id: int,
    bench: str = "bench-01",
    request_id: str | None = None,
) -> tuple[Any, MeterReading]:
    """Read a meter (no bundle checks) and ask the service for its hand-out command; the HandOutResponse."""
    reading = read_meter(transport, device_id)
    with deployment.client(bench) as api:
        reply = api.request_hand_out(
            request_id or new_request_id(),
            device_id.hex(),
            area_id,
            reading.device_certificate,
            reading.credentials_response,
        )
    return reply, reading


# -- meters -------------------------------------------------------------------------------------------


def no_cells(device: SimulatedDevice) -> tuple[bytes, bytes]:
    """DER certificates in the device's NO DS and KA cells."""
    return device.cells[NO_DS_CELL], device.cells[NO_KA_CELL]


def record_mismatches(deployment: Deployment, meters: dict[bytes, SimulatedDevice]) -> list[str]:
    """Each meter whose records differ from its real cells, named with both: the custody state the NO cells
    imply (an area DNO's set -> area, a vanilla generation's -> vanilla) against devices.custody_state, area
    and generation, and the NO cells' (entity id, key id) against the recorded ones. A meter the records
    have never seen must still hold vanilla generation 1, as it came."""
    areas = {area_entity_id(a): a for a in range(10, 24)}
    vanilla = {vanilla_entity_id(g): g for g in range(1, 10)}
    problems = []
    with deployment.store() as store:
        for device_id, meter in meters.items():
            ds, ka = (meter.cell_certificate(cell) for cell in (NO_DS_CELL, NO_KA_CELL))
            assert ds is not None and ka is not None
            if ds.entity_id in areas:
                real = ("area", areas[ds.entity_id], None)
            else:
                real = ("vanilla", None, vanilla.get(ds.entity_id))
            custody = store.device_custody(device_id)
            if custody is None:
                recorded: tuple[str, int | None, int | None] = ("vanilla", None, 1)
            else:
                recorded = (custody.state.value, custody.area_id, custody.generation)
            if recorded != real:
                problems.append(f"{device_id.hex()}: records {recorded}, cells {real}")
            ds_cell, ka_cell = store.device_cells(device_id)
            held = ((ds.entity_id, ds.subject_key_identifier), (ka.entity_id, ka.subject_key_identifier))
            kept = tuple(
                None if c is None else (c.entity_id, c.subject_key_identifier) for c in (ds_cell, ka_cell)
            )
            if custody is not None and kept != held:
                problems.append(f"{device_id.hex()}: recorded cells {kept}, real cells {held}")
    return problems


def replacement_outcomes(response: bytes) -> tuple[ReplacementOutcome, ...]:
    """Per-cell outcomes of a meter's signed CS02b response."""
    payload = UpdateSecurityCredentialsResponse.decode(decode_message(response).apdu.content)
    assert payload.execution_outcome is not None, "the meter reported no execution outcome"
    return payload.execution_outcome.replacement_outcomes


def hand_in_command(
    state: Path,
    area_id: int,
    device_id: bytes,
    counter: int,
    generation: int = 1,
    *,
    originator: bytes | None = None,
    replacements: tuple[bytes, bytes] | None = None,
    mode: int = 3,
    message_code: int = MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
    seq_number: int | None = None,
    floor: int | None = 0,
    path: tuple[bytes, ...] | None = None,
    execution: datetime | None = None,
) -> bytes:
    """An area DNO's CS02b command putting vanilla `generation` into a meter's NO cells (a hand-in), signed in
    software with the lab DNO key of `area_id` (GS APDU, no MAC: MAC it with Deployment.mac). The keyword
    arguments forge what a DNO (or an attacker) could get wrong: another originator id in the header, other
    replacement certificates (DS, KA), another mode or message code, another seq number (default: the
    counter), another floor, another path, a future execution time."""
    dno_key = read_certified_key(state / "areas", f"area-{area_id}-ds")
    header = GroupingHeader(
        cra=Cra.COMMAND,
        originator_counter=counter,
        business_originator_id=originator or area_entity_id(area_id),
        business_target_id=device_id,
        message_code=message_code,
    )
    vanilla_ds = der_of(state / "pki" / f"vanilla-g{generation}-ds.pem")
    vanilla_ka = der_of(state / "pki" / f"vanilla-g{generation}-ka.pem")
    ds, ka = replacements or (vanilla_ds, vanilla_ka)
    payload = UpdateSecurityCredentialsCommand(
        control=AuthorisingRemotePartyControl(
            mode=mode,
            seq_number=counter if seq_number is None else seq_number,
            ta_cell=NO_DS_CELL,
            floor_seq_number=floor,
        ),
        replacements=(TrustAnchorReplacement(ds, NO_DS_CELL), TrustAnchorReplacement(ka, NO_KA_CELL)),
        certification_path_certificates=path or (der_of(state / "pki" / "issuing-ca.pem"),),
        execution_date_time=execution,
    )
    apdu = GeneralSigningApdu(header, payload.encode())
    return sign_apdu(apdu, dno_key.signing_key).encode()


def microseconds_now() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


# -- the token, from a subprocess ---------------------------------------------------------------------

_READ_ATTRIBUTES = textwrap.dedent(
    """
    import dataclasses, json, os, sys
    from vdno.server.hsm.keys import read_private_key_attributes
    from vdno.server.hsm.token import open_token_session
    module, token, labels = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = {}
    with open_token_session(module, token, os.environ["VDNO_TEST_PIN"], rw=False) as session:
        for label in labels:
            attrs = dataclasses.asdict(read_private_key_attributes(session, label=label))
            out[label] = {k: v for k, v in attrs.items() if isinstance(v, (bool, str, int))}
    print(json.dumps(out))
    """
)


_LIST_LABELS = textwrap.dedent(
    """
    import json, os, sys
    from pkcs11 import Attribute
    from vdno.server.hsm.token import open_token_session
    module, token = sys.argv[1], sys.argv[2]
    with open_token_session(module, token, os.environ["VDNO_TEST_PIN"], rw=False) as session:
        labels = sorted(str(o[Attribute.LABEL]) for o in session.get_objects({}))
    print(json.dumps(labels))
    """
)


def token_labels(state: Path, module: Path) -> list[str]:
    """Labels of every object in the token, read in a separate process (the PIN through the environment)."""
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(state / "softhsm2.conf"),
        "VDNO_TEST_PIN": (state / "secrets" / "user.pin").read_text().strip(),
    }
    done = subprocess.run(
        [PYTHON, "-c", _LIST_LABELS, str(module), "vdno"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    labels: list[str] = json.loads(done.stdout)
    return labels


def read_key_attributes(state: Path, module: Path, labels: list[str]) -> dict[str, dict[str, Any]]:
    """Custody attributes of private keys, read back from the token in a separate process (the PIN goes
    through the environment, never argv)."""
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(state / "softhsm2.conf"),
        "VDNO_TEST_PIN": (state / "secrets" / "user.pin").read_text().strip(),
    }
    done = subprocess.run(
        [PYTHON, "-c", _READ_ATTRIBUTES, str(module), "vdno", *labels],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return result


# -- faults and health ---------------------------------------------------------------------------------


def set_config(state: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (a TOML literal) in [section] of the state's config.toml."""
    path = state / "config.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[{section}]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    lines = [line for i, line in enumerate(lines) if not (start <= i < end and line.startswith(f"{key} ="))]
    lines.insert(start, f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def token_away(state: Path) -> Iterator[None]:
    """SoftHSM's directory of the token moved out of the token dir (the token is removed), then back."""
    [directory] = [p for p in (state / "tokens").iterdir() if p.is_dir()]
    away = state / f"away-{directory.name}"
    shutil.move(directory, away)
    try:
        yield
    finally:
        shutil.move(away, directory)


def health_of(port: int, service: str = "") -> str:
    """What the plaintext health listener on `port` says for `service` ("" is the whole service): a
    status name, or the gRPC code name of a failed check."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_for_health(port: int, status: str, within: float, service: str = "") -> float:
    """Seconds until health says `status` for `service`; fails after `within` seconds."""
    started = time.monotonic()
    while (seen := health_of(port, service)) != status:
        assert time.monotonic() - started < within, f"health of {service!r} still {seen} after {within} s"
        time.sleep(0.05)
    return time.monotonic() - started


class HealthTimeline:
    """Polls the health listener ("" service) every 50 ms in a thread; `changes` holds (monotonic time,
    status) at each change."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> HealthTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record(health_of(self.port))  # the timeline ends with the status at the end of the block

    def _record(self, status: str) -> None:
        if not self.changes or self.changes[-1][1] != status:
            self.changes.append((time.monotonic(), status))

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._record(health_of(self.port))
            self._stop.wait(0.05)

    def first(self, status: str, after: float) -> float | None:
        return next((t for t, s in self.changes if s == status and t >= after), None)


@dataclass(frozen=True)
class HandedOut:
    """One bench request that ended signed: what the bench got, and how often it was told UNAVAILABLE."""

    bench: str
    request_id: str
    device_id: bytes
    area_id: int
    command: bytes
    counter: int
    issuance_id: int
    unavailable: int
    signed_at: float


class BenchLoad:
    """`threads` benches (alternating bench-01 and bench-02) handing out fresh simulated vanilla meters one
    after another through BenchClient, one attempt per call: a call answered UNAVAILABLE is retried with
    the same request id every `retry` seconds until it is signed (at most `give_up` seconds). Any other
    answer fails the run (raised when the block ends)."""

    def __init__(
        self,
        deployment: Deployment,
        threads: int = 4,
        meters: int = 150,
        pause: float = 0.05,
        retry: float = 0.1,
        give_up: float = 30.0,
    ) -> None:
        self.deployment = deployment
        self.done: list[HandedOut] = []
        self.unavailable_at: list[float] = []
        self._pause, self._retry, self._give_up = pause, retry, give_up
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._bench, args=(BENCHES[i % 2], *deployment.meters(meters)))
            for i in range(threads)
        ]

    def __enter__(self) -> BenchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._give_up + 10)
        if self._errors:
            raise self._errors[0]

    def signed_after(self, moment: float, within: float) -> float:
        """Seconds from `moment` until a request was signed after it; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            found = [d.signed_at for d in list(self.done) if d.signed_at > moment]
            if found:
                return min(found) - moment
            assert time.monotonic() < deadline, f"nothing signed within {within} s"
            time.sleep(0.01)

    def _bench(self, bench: str, transport: InProcessTransport, device_ids: list[bytes]) -> None:
        try:
            with self.deployment.client(bench, attempts=1) as api:
                for n, device_id in enumerate(device_ids):
                    if self._stop.is_set():
                        return
                    self._hand_out(api, bench, transport, device_id, 10 + n % 14)
                    self._stop.wait(self._pause)
        except BaseException as exc:
            self._errors.append(exc)

    def _hand_out(
        self, api: BenchClient, bench: str, transport: InProcessTransport, device_id: bytes, area: int
    ) -> None:
        reading = read_meter(transport, device_id)
        request_id = new_request_id()
        unavailable = 0
        deadline = time.monotonic() + self._give_up
        while True:
            try:
                reply = api.request_hand_out(
                    request_id,
                    device_id.hex(),
                    area,
                    reading.device_certificate,
                    reading.credentials_response,
                )
                break
            except ServiceError as exc:
                if exc.code_name != "UNAVAILABLE" or time.monotonic() > deadline:
                    raise
                unavailable += 1
                self.unavailable_at.append(time.monotonic())
                time.sleep(self._retry)
        self.done.append(
            HandedOut(
                bench,
                request_id,
                device_id,
                area,
                reply.command,
                reply.originator_counter,
                reply.issuance_id,
                unavailable,
                time.monotonic(),
            )
        )


def log_events(log_text: str) -> list[dict[str, Any]]:
    """The JSON events of a server log (a line that is not JSON is skipped)."""
    events = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


__all__ = [
    "BENCHES",
    "BIN",
    "VANILLA_G1_ENTITY",
    "BenchLoad",
    "Deployment",
    "HandedOut",
    "HealthTimeline",
    "area_entity_id",
    "deploy",
    "der_of",
    "hand_in_command",
    "hand_out_request",
    "health_of",
    "log_events",
    "microseconds_now",
    "new_request_id",
    "no_cells",
    "postgres_schema",
    "read_key_attributes",
    "record_mismatches",
    "replacement_outcomes",
    "request_command",
    "rpc_error",
    "set_config",
    "ski_of",
    "token_away",
    "wait_for_health",
]
