"""Fuzz the real service: every field of every RPC of BenchService, CustodyService and AuditService, with
values generated from the proto descriptors and mutations of valid inputs (bit flips, truncations, splices
of meter readings, certificates, commands, DUIS documents, CSRs), undecodable request bytes, and calls by the
wrong role. Counts the answers by status. Passes when nothing is INTERNAL or UNKNOWN (an unhandled
exception), no call hangs, the server is still running, and a valid hand-out succeeds afterwards.

    make fuzz                                  # 100,000 cases against a fresh state folder, then a hand-out
    python scripts/fuzz.py --cases 5000 --seed 7

The integration tests run a short campaign with the same code (tests/integration/test_fuzz.py)."""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from google.protobuf import descriptor as protobuf_descriptor  # noqa: E402
from google.protobuf import message_factory  # noqa: E402

from scripts.lab_service import bench_channel, free_port, open_private_log, wait_until_serving  # noqa: E402
from vdno.v1 import audit_pb2, custodian_pb2, custody_pb2  # noqa: E402

FAILING = ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")  # an unhandled exception, or a call that hangs
CALL_TIMEOUT = 20.0  # seconds: a call still unanswered by then counts as a hang
ROLE_CERTIFICATE = {"vdno.v1.BenchService": "bench", "vdno.v1.CustodyService": "officer"}
EUI64_DIGITS = "0123456789ABCDEF"

_F = protobuf_descriptor.FieldDescriptor
_INT_LIMITS = {
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
}


@dataclass(frozen=True)
class Method:
    path: str  # /vdno.v1.Service/Method
    service: str
    name: str
    request: type[Any]  # the request message class

    @property
    def role(self) -> str:
        return ROLE_CERTIFICATE.get(self.service, "officer")


def all_methods() -> list[Method]:
    """Every method of the three services, from the proto descriptors."""
    methods = []
    for module in (custodian_pb2, custody_pb2, audit_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                request = message_factory.GetMessageClass(m.input_type)
                methods.append(Method(f"/{service.full_name}/{m.name}", service.full_name, m.name, request))
    return methods


@dataclass
class Seeds:
    """Valid values to start from and mutate: by field name, and whole valid requests by method name."""

    strings: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    blobs: dict[str, list[bytes]] = field(default_factory=lambda: collections.defaultdict(list))
    ints: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    requests: dict[str, list[Any]] = field(default_factory=lambda: collections.defaultdict(list))

    def all_blobs(self) -> list[bytes]:
        return [b for values in self.blobs.values() for b in values]


def _hex_id(value: bytes) -> str:
    return value.hex().upper()


class Mutator:
    """Field values: valid seeds, mutations of them, and values of the field's type chosen to hurt."""

    def __init__(self, rng: random.Random, seeds: Seeds) -> None:
        self.rng = rng
        self.seeds = seeds
        self._blob_pool = seeds.all_blobs()
        self.touched: collections.Counter[str] = collections.Counter()  # fields given a value, by full name

    # -- bytes
    def blob(self, name: str) -> bytes:
        rng = self.rng
        pool = self.seeds.blobs.get(name) or self._blob_pool
        base = rng.choice(pool) if pool else b""
        kind = rng.randrange(12)
        if kind == 0:
            return base
        if kind in (1, 2, 3):
            return self.flip_bits(base, rng.choice((1, 1, 1, 2, 3, 8)))
        if kind == 4:
            return base[: rng.randrange(len(base) + 1)]
        if kind == 5:
            return base + rng.randbytes(rng.randrange(1, 64))
        if kind == 6:
            other = rng.choice(self._blob_pool) if self._blob_pool else b""
            cut, at = rng.randrange(len(base) + 1), rng.randrange(len(other) + 1)
            return base[:cut] + other[at:]
        if kind == 7:
            return rng.randbytes(rng.randrange(0, 600))
        if kind == 8:
            return rng.choice(
                (b"", b"\x00", b"\xdd", b"\xdf", b"\x30\x80", b"<", b"-----BEGIN CERTIFICATE-----")
            )
        if kind == 9:
            return self.set_bytes(base)
        if kind == 10:  # the same bytes in another encoding the service reads: hex text, PEM, base64
            return rng.choice(
                (
                    base.hex().encode(),
                    b"-----BEGIN CERTIFICATE-----\n"
                    + base64.encodebytes(base)
                    + b"-----END CERTIFICATE-----\n",
                    base64.b64encode(base),
                )
            )
        return rng.choice(self._blob_pool) if self._blob_pool else base  # a valid value of another field

    def flip_bits(self, data: bytes, count: int) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for _ in range(count):
            i = self.rng.randrange(len(out) * 8)
            out[i // 8] ^= 1 << (i % 8)
        return bytes(out)

    def set_bytes(self, data: bytes) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            out[self.rng.randrange(len(out))] = self.rng.choice(
                (0x00, 0x7F, 0x80, 0xFF, self.rng.randrange(256))
            )
        return bytes(out)

    # -- strings
    def string(self, name: str) -> str:
        rng = self.rng
        pool = self.seeds.strings.get(name) or []
        base = rng.choice(pool) if pool else ""
        kind = rng.randrange(10)
        if kind in (0, 1):
            return base
        if kind == 2:
            return base[: rng.randrange(len(base) + 1)]
        if kind == 3 and base:
            i = rng.randrange(len(base))
            return base[:i] + rng.choice("0aZ-_.:/ \t\n\x00é€😀") + base[i + 1 :]
        if kind == 4:
            return "".join(
                rng.choice(EUI64_DIGITS + "-: g") for _ in range(rng.choice((0, 15, 16, 17, 19, 23)))
            )
        if kind == 5:
            return rng.choice(
                ("", " ", "\x00", "0", "-1", "null", "%s%n", "../../etc/passwd", "'; DROP TABLE x;--")
            )
        if kind == 6:
            return "".join(
                chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0xD800))))
                for _ in range(rng.randrange(1, 80))
            )
        if kind == 7:
            return rng.choice(("A", "é", "-", "0")) * rng.choice((64, 65, 500, 5000))
        if kind == 8:
            other = [s for values in self.seeds.strings.values() for s in values]
            return rng.choice(other) if other else base
        return base.upper() if rng.random() < 0.5 else base.lower()

    # -- numbers and flags
    def integer(self, name: str, kind: int) -> int:
        rng = self.rng
        low, high = _INT_LIMITS.get(kind, (0, 2**32 - 1))
        pool = self.seeds.ints.get(name) or []
        choice = rng.randrange(6)
        if choice in (0, 1) and pool:
            return rng.choice(pool)
        if choice == 2:
            return rng.choice(
                [
                    v
                    for v in (low, high, high - 1, 0, 1, 2, 9, 10, 23, 24, 2**31, 2**32 - 1)
                    if low <= v <= high
                ]
            )
        if choice == 3 and pool:
            return max(low, min(high, rng.choice(pool) + rng.choice((-1, 1, 1000))))
        if choice == 4:
            return rng.randint(max(low, -1000), min(high, 1000))
        return rng.randint(low, high)

    def value(self, f: Any) -> Any:
        if f.type == _F.TYPE_STRING:
            return self.string(f.name)
        if f.type == _F.TYPE_BYTES:
            return self.blob(f.name)
        if f.type == _F.TYPE_BOOL:
            return self.rng.random() < 0.5
        if f.type in _INT_LIMITS:
            return self.integer(f.name, f.type)
        raise ValueError(f"field {f.full_name} of type {f.type} has no generator")

    def request(self, method: Method) -> Any:
        """A request for `method`: a valid one (when seeded) or an empty one, with some fields replaced."""
        rng = self.rng
        seeded = self.seeds.requests.get(method.name)
        message = method.request()
        if seeded:
            message.CopyFrom(rng.choice(seeded))
        fields = list(method.request.DESCRIPTOR.fields)
        if not fields:
            return message
        for f in rng.sample(fields, rng.randint(1, len(fields))):
            self.touched[f.full_name] += 1
            if _is_repeated(f):
                del getattr(message, f.name)[:]
                getattr(message, f.name).extend(self.value(f) for _ in range(rng.choice((0, 1, 1, 2, 5))))
            else:
                setattr(message, f.name, self.value(f))
        return message


def _is_repeated(f: Any) -> bool:
    return bool(f.is_repeated)


@dataclass(frozen=True)
class Case:
    method: Method
    caller: str  # "bench" | "officer"
    data: bytes  # the request as sent (possibly not a valid message)
    kind: str  # fields | raw | wrong-role


# Requests whose success would change custody for good and end the campaign's meaning: revoking the benches
# it calls with, marking the generations it hands out with compromised, generating keys in the token for
# every entity id that happens to be valid (a few are allowed: the key ceremony is exercised).
NEW_GENERATIONS_ALLOWED = 3


class Guard:
    def __init__(self, benches: set[str], generations: set[int]) -> None:
        self._benches = {b.lower() for b in benches}
        self._generations = generations
        self._new_generations = 0

    def allows(self, method: Method, message: Any) -> bool:
        if method.name == "RevokeBench":
            return message.bench_id.strip().lower() not in self._benches
        if method.name == "MarkGenerationCompromised":
            return message.generation not in self._generations
        if method.name == "CreateGeneration":
            digits = "".join(c for c in message.entity_id if c not in "-: ")
            if len(digits) == 16 and all(c in EUI64_DIGITS for c in digits.upper()):
                self._new_generations += 1
                return self._new_generations <= NEW_GENERATIONS_ALLOWED
        return True


class CaseMaker:
    def __init__(self, seed: int, seeds: Seeds, guard: Guard, methods: list[Method] | None = None) -> None:
        self.rng = random.Random(seed)
        self.mutator = Mutator(self.rng, seeds)
        self.guard = guard
        self.methods = methods or all_methods()

    def _allowed_raw(self, method: Method, data: bytes) -> bool:
        """Raw bytes the server can decode pass the guard like any request."""
        try:
            message = method.request.FromString(data)
        except Exception:  # undecodable: the server refuses it as such
            return True
        return self.guard.allows(method, message)

    def cases(self) -> Iterator[Case]:
        rng = self.rng
        while True:
            method = rng.choice(self.methods)
            roll = rng.random()
            if roll < 0.06:  # bytes that may not be the request message at all
                valid = self.mutator.request(method).SerializeToString()
                data = rng.choice(
                    (
                        rng.randbytes(rng.randrange(0, 300)),
                        self.mutator.flip_bits(valid, rng.randint(1, 4)),
                        valid[: rng.randrange(len(valid) + 1)],
                        valid + rng.randbytes(rng.randrange(1, 16)),
                    )
                )
                if self._allowed_raw(method, data):
                    yield Case(method, method.role, data, "raw")
                continue
            message = self.mutator.request(method)
            if not self.guard.allows(method, message):
                continue
            if roll < 0.08:  # the other role's certificate
                other = "officer" if method.role == "bench" else "bench"
                yield Case(method, other, message.SerializeToString(), "wrong-role")
                continue
            yield Case(method, method.role, message.SerializeToString(), "fields")


@dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    by_status: collections.Counter[str] = field(default_factory=collections.Counter)
    by_method: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    failures: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # method, kind, status, detail+data

    @property
    def failed(self) -> int:
        return sum(self.by_status[s] for s in FAILING)

    def summary(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        counts = ", ".join(f"{status} {n}" for status, n in self.by_status.most_common())
        return f"{self.cases} cases in {self.seconds:.1f} s ({rate:.0f}/s): {counts}"


class Target:
    """Channels to a running server as a bench and as an officer, one multicallable per method."""

    def __init__(self, state: Path, port: int, bench: str = "bench-01", officer: str = "officer-01") -> None:
        self.channels = {
            "bench": bench_channel(state, port, bench),
            "officer": bench_channel(state, port, officer),
        }
        self._calls: dict[tuple[str, str], Any] = {}

    def call(self, caller: str, path: str) -> Any:
        key = (caller, path)
        if key not in self._calls:
            self._calls[key] = self.channels[caller].unary_unary(path)  # bytes in, bytes out
        return self._calls[key]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def run_cases(
    target: Target,
    cases: Iterator[Case],
    count: int,
    in_flight: int = 8,
    seconds: float | None = None,
    alive: Callable[[], bool] = lambda: True,
    progress: Callable[[int, Report], None] | None = None,
) -> Report:
    """Send `count` cases (or as many as fit in `seconds`), `in_flight` at a time; count the answers.
    `progress(sent, report)` is called every 5,000 cases."""
    report = Report()
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(in_flight)
    started = time.monotonic()
    deadline = None if seconds is None else started + seconds

    def done(case: Case, future: Any) -> None:
        error = future.exception()
        status = "OK" if error is None else error.code().name
        with lock:
            report.by_status[status] += 1
            report.by_method[case.method.path][status] += 1
            if status in FAILING and len(report.failures) < 20:
                details = "" if error is None else error.details()
                report.failures.append(
                    (case.method.path, case.kind, status, f"{details} | {case.data.hex()[:400]}")
                )
        slots.release()

    sent = 0
    for case in cases:
        if sent >= count or (deadline is not None and time.monotonic() > deadline):
            break
        if sent % 500 == 0 and not alive():
            raise RuntimeError(f"the server stopped after {sent} cases")
        if progress is not None and sent and sent % 5000 == 0:
            with lock:
                progress(sent, report)
        slots.acquire()
        future = target.call(case.caller, case.method.path).future(case.data, timeout=CALL_TIMEOUT)
        future.add_done_callback(lambda f, c=case: done(c, f))
        sent += 1
    for _ in range(in_flight):  # every answer is in
        slots.acquire()
    report.cases = sent
    report.seconds = time.monotonic() - started
    return report


def log_problems(log: str) -> collections.Counter[str]:
    """What a server log must not hold after a campaign: lines that are not one JSON object, INTERNAL
    answers, uncaught exceptions (a thread that died), tracebacks outside an "exception" field."""
    found: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            found["not a JSON object"] += 1
            continue
        if not isinstance(event, dict):
            found["not a JSON object"] += 1
            continue
        name = str(event.get("event", ""))
        if name == "rpc.internal_error" or name.endswith("uncaught_exception"):
            found[name] += 1
        elif "Traceback" in line and "exception" not in event:
            found["traceback outside an exception field"] += 1
    return found


# -- seeds from a state folder and its running server ---------------------------------------------------


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def _rpc(target: Target, caller: str, path: str, request: Any, reply: type[Any]) -> Any:
    return reply.FromString(target.call(caller, path)(request.SerializeToString(), timeout=60))


def build_seeds(state: Path, target: Target, first_meter: int = 900) -> tuple[Seeds, int]:
    """Valid inputs from the state folder and a few real calls: readings of fresh vanilla meters and of a
    commissioned one, a signed hand-out command and the meter's response to it (MAC-framed by the lab
    DCC), a hand-in order and the DNO's DUIS answer to it, certificates, a bench CSR. Returns the seeds and
    the next free meter number."""
    from scripts.lab_tray import InProcessTransport, tray_device_id, vanilla_tray_profiles
    from vdno.client.enrolment import make_key_and_request
    from vdno.client.handout import read_meter
    from vdno.duis.messages import LocalCommandResponse, encode_local_command_response
    from vdno.labdcc.dcc import LabDcc
    from vdno.labdcc.parties import area_entity_id
    from vdno.labpki.hierarchy import LabHierarchy
    from vdno.labpki.store import read_certificate
    from vdno.simulator.lab import LabCredentialSet, export_device_credentials, lab_meter_profile

    seeds = Seeds()
    pki = state / "pki"
    for name in ("issuing-ca", "root-ca", "device-ca", "vanilla-g1-ds", "vanilla-g1-ka"):
        if (pki / f"{name}.pem").exists():
            usage = "ka_certificate" if name.endswith("-ka") else "ds_certificate"
            seeds.blobs[usage].append(_der(pki / f"{name}.pem"))
    for area in (10, 11, 12):
        seeds.blobs["ds_certificate"].append(_der(state / "areas" / f"area-{area}-ds.pem"))
        seeds.blobs["ka_certificate"].append(_der(state / "areas" / f"area-{area}-ka.pem"))
    csr_dir = state / "fuzz-csr" / uuid.uuid4().hex[:8]
    _, csr_path = make_key_and_request("bench-fuzz", csr_dir)
    csr_pem = csr_path.read_bytes()
    seeds.blobs["csr"] += [csr_pem, x509.load_pem_x509_csr(csr_pem).public_bytes(Encoding.DER)]

    # vanilla meters: their readings, one real hand-out, the meter's response
    profiles = vanilla_tray_profiles(state, 3, first=first_meter)
    transport = InProcessTransport(profiles)
    readings = {p.device_id: read_meter(transport, p.device_id) for p in profiles}
    for device_id, reading in readings.items():
        seeds.strings["device_id"].append(_hex_id(device_id))
        seeds.blobs["device_certificate"].append(reading.device_certificate)
        seeds.blobs["credentials_response"].append(reading.credentials_response)
        seeds.requests["RequestHandOut"].append(
            custodian_pb2.HandOutRequest(
                request_id=f"fuzz-{uuid.uuid4().hex[:12]}",
                device_id=_hex_id(device_id),
                area_id=12,
                device_certificate=reading.device_certificate,
                credentials_response=reading.credentials_response,
            )
        )
        seeds.requests["RequestRotation"].append(
            custodian_pb2.RotationRequest(
                request_id=f"fuzz-{uuid.uuid4().hex[:12]}",
                device_id=_hex_id(device_id),
                device_certificate=reading.device_certificate,
                credentials_response=reading.credentials_response,
            )
        )
    handed_out = seeds.requests["RequestHandOut"][0]
    reply = _rpc(
        target, "bench", "/vdno.v1.BenchService/RequestHandOut", handed_out, custodian_pb2.HandOutResponse
    )
    command = bytes(reply.command)
    device_id = bytes.fromhex(handed_out.device_id)
    dcc = LabDcc(state)
    framed = dcc.local_command(command, device_id)
    response = transport.send(device_id, framed)
    seeds.blobs["response"] += [response]
    seeds.blobs["payload"] += [command, framed, command.hex().encode()]
    seeds.requests["ReportOutcome"].append(
        custodian_pb2.OutcomeReport(request_id=handed_out.request_id, response=response)
    )

    # a commissioned meter: a hand-in order and the area DNO's answer to its export
    hierarchy = LabHierarchy.load(pki)
    area = 11
    holder = LabCredentialSet(
        area_entity_id(area),
        read_certificate(state / "areas" / f"area-{area}-ds.pem"),
        read_certificate(state / "areas" / f"area-{area}-ka.pem"),
    )
    in_service = lab_meter_profile(
        tray_device_id(first_meter + 3),
        hierarchy.device_ca,
        hierarchy.root.certificate,
        holder,
        read_certificate(state / "acb" / "acb-ka.pem"),
        7,
    )
    export_device_credentials([in_service], state / "keystore")
    commissioned = InProcessTransport([in_service])
    reading = read_meter(commissioned, in_service.device_id)
    hand_in = custodian_pb2.HandInRequest(
        request_id=f"fuzz-{uuid.uuid4().hex[:12]}",
        device_id=_hex_id(in_service.device_id),
        device_certificate=reading.device_certificate,
        credentials_response=reading.credentials_response,
    )
    seeds.requests["RequestHandIn"].append(hand_in)
    seeds.strings["device_id"].append(hand_in.device_id)
    seeds.blobs["device_certificate"].append(reading.device_certificate)
    seeds.blobs["credentials_response"].append(reading.credentials_response)
    order = _rpc(target, "bench", "/vdno.v1.BenchService/RequestHandIn", hand_in, custodian_pb2.HandInOrder)
    exported = _rpc(
        target,
        "officer",
        "/vdno.v1.CustodyService/ExportHandInRequests",
        custody_pb2.ExportHandInRequestsRequest(area_id=area),
        custody_pb2.HandInExport,
    )
    for item in exported.requests:
        seeds.blobs["payload"].append(dcc.answer_request(bytes(item.duis_request)))
    seeds.blobs["payload"].append(  # the hand-out command in a DUIS answer: decodes, then fails the checks
        encode_local_command_response(
            LocalCommandResponse(None, "I0", datetime.now(UTC), "6.15", "6.15.1", framed)
        )
    )
    seeds.ints["order_id"] += [order.order_id, order.order_id + 1]
    seeds.requests["ReportHandInOutcome"].append(
        custodian_pb2.HandInOutcomeReport(order_id=order.order_id, response=response)
    )
    seeds.requests["FetchHandInCommands"].append(
        custodian_pb2.FetchHandInCommandsRequest(device_ids=[hand_in.device_id])
    )

    # custody: what officers send
    seeds.strings["bench_id"] += ["bench-01", "bench-02", "bench-fuzz", "bench-99"]
    seeds.strings["entity_id"] += [_hex_id(area_entity_id(12)), "4C41420000030099"]
    seeds.strings["key_usage"] += ["ds", "ka"]
    seeds.strings["operation"] += [
        "activate-generation",
        "disable-generation",
        "reenable-generation",
        "schedule-destruction",
        "cancel-destruction",
    ]
    seeds.strings["operations"] += ["hand-in", "hand-out", "rotation"]
    seeds.strings["status"] += ["awaiting-authorisation", "authorised", "applied", "rejected", "cancelled"]
    seeds.strings["reason"] += ["fuzz: a reason", "x"]
    seeds.strings["facility"] += ["fuzz lab", "Bench room 2"]
    seeds.strings["request_id"] += [f"fuzz-{uuid.uuid4().hex[:12]}", handed_out.request_id]
    seeds.ints["generation"] += [1, 2, 3]
    seeds.ints["area_id"] += list(range(10, 24))
    seeds.ints["request_id"] += [1, 2, 3]
    seeds.requests["RequestBenchEnrolment"].append(
        custody_pb2.BenchEnrolmentRequest(
            bench_id="bench-fuzz", csr=csr_pem, facility="fuzz lab", operations=["hand-out"], reason="fuzz"
        )
    )
    seeds.requests["RequestAreaReplacement"].append(
        custody_pb2.AreaReplacementRequest(
            area_id=12,
            ds_certificate=seeds.blobs["ds_certificate"][-1],
            ka_certificate=seeds.blobs["ka_certificate"][-1],
            reason="fuzz",
        )
    )
    seeds.requests["ImportGenerationCertificates"].append(
        custody_pb2.ImportGenerationCertificatesRequest(
            generation=1,
            ds_certificate=_der(pki / "vanilla-g1-ds.pem"),
            ka_certificate=_der(pki / "vanilla-g1-ka.pem"),
        )
    )
    seeds.requests["ImportHandInCommand"] += [
        custody_pb2.ImportHandInCommandRequest(payload=p) for p in seeds.blobs["payload"]
    ]
    return seeds, first_meter + 4


def valid_hand_out(state: Path, target: Target, meter: int) -> Any:
    """A fresh vanilla meter handed out to area 12: the HandOutResponse (raises grpc.RpcError if refused)."""
    from scripts.lab_tray import InProcessTransport, vanilla_tray_profiles
    from vdno.client.handout import read_meter

    [profile] = vanilla_tray_profiles(state, 1, first=meter)
    reading = read_meter(InProcessTransport([profile]), profile.device_id)
    request = custodian_pb2.HandOutRequest(
        request_id=f"fuzz-final-{uuid.uuid4().hex[:12]}",
        device_id=_hex_id(profile.device_id),
        area_id=12,
        device_certificate=reading.device_certificate,
        credentials_response=reading.credentials_response,
    )
    return _rpc(
        target, "bench", "/vdno.v1.BenchService/RequestHandOut", request, custodian_pb2.HandOutResponse
    )


# -- make fuzz ------------------------------------------------------------------------------------------


def _start_server(state: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, VDNO_LISTEN=f"127.0.0.1:{port}")
    with open_private_log(state / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "vdno.server.main", "serve", "--config", str(state / "config.toml")],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    wait_until_serving(state, port, server.poll, timeout=90)
    return server, port


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", type=Path, default=ROOT / "state-fuzz", help="made afresh")
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    state = args.state.resolve()
    shutil.rmtree(state, ignore_errors=True)
    for tool in ("vdno.labdcc", "vdno.server.main"):
        subprocess.run(
            [sys.executable, "-m", tool, "init", "--state", str(state)], check=True, stdout=subprocess.DEVNULL
        )
    server, port = _start_server(state)
    target = Target(state, port)
    try:
        seeds, next_meter = build_seeds(state, target)
        maker = CaseMaker(args.seed, seeds, Guard({"bench-01", "bench-02"}, {1}))
        print(f"fuzzing {len(maker.methods)} methods with seed {args.seed}: {args.cases} cases", flush=True)
        started = time.monotonic()

        def progress(sent: int, so_far: Report) -> None:
            counts = ", ".join(f"{s} {n}" for s, n in so_far.by_status.most_common())
            print(f"  {sent} sent in {time.monotonic() - started:.0f} s: {counts}", flush=True)

        report = run_cases(
            target,
            maker.cases(),
            args.cases,
            args.in_flight,
            alive=lambda: server.poll() is None,
            progress=progress,
        )
        print(report.summary())
        for path, counts in sorted(report.by_method.items()):
            print(f"  {path}: " + ", ".join(f"{s} {n}" for s, n in counts.most_common()))
        for failure in report.failures:
            print("FAILED:", *failure)
        alive = server.poll() is None
        print(f"server running afterwards: {alive}")
        final = valid_hand_out(state, target, next_meter) if alive else None
        if final is not None:
            print(f"a valid hand-out afterwards: OK (issuance {final.issuance_id})")
        time.sleep(0.5)  # the server writes info lines every 0.1 s
        problems = log_problems((state / "server.log").read_text(errors="replace"))
        print(
            "server log: "
            + (", ".join(f"{k} {n}" for k, n in problems.items()) or "every line one JSON object")
        )
        return 0 if alive and final is not None and report.failed == 0 and not problems else 1
    finally:
        target.close()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
