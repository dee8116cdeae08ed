"""Fault tests: records stay true through crashes (ARCHITECTURE §5.12), on SQLite and PostgreSQL.

- The server is killed with SIGKILL at a random moment while a bench runs a tray of fresh meters, restarted
  (same port) and the tray rerun from its journal (same request ids) until every meter is applied; ROUNDS
  rounds of METERS meters.
- A `vdno-bench` process is killed with SIGKILL between applying a command (the meter has answered) and
  reporting it; the tray is rerun with `vdno-bench` again.
Afterwards every meter's recorded state equals its real cells, each request has one issuance with one
signature (the bytes every run received), and no counter was used twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from integration_testlib import BIN, Deployment, record_mismatches

from scripts.lab_service import free_port
from scripts.lab_tray import InProcessTransport
from vdno.client.api import ATTEMPTS
from vdno.client.errors import BenchError
from vdno.client.handout import ALREADY_APPLIED, APPLIED, HandOutResult, hand_out
from vdno.client.tray import TrayJournal, run_tray
from vdno.device_frames import DEVICE_ID_LEN, OP_SEND, RESP_GBCS
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.server.bootstrap import vanilla_entity_id
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.tray import Tray, TrayServer

ROUNDS = 10
METERS = 5
AREAS = tuple(range(10, 24))
KILL_JITTER = 0.05  # seconds after a meter is begun: about what one hand-out takes here
RERUNS = 3


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def prepare_database(deployment: Deployment) -> None:
    """A fixed port, so that benches reach the server again once it is restarted."""
    deployment.server.extra_env["VDNO_LISTEN"] = f"127.0.0.1:{free_port()}"


def kill_server(deployment: Deployment) -> None:
    proc = deployment.server.proc
    assert proc is not None and proc.poll() is None, "the server is not running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deployment.server.proc = None


def write_tray(path: Path, areas: dict[bytes, int]) -> None:
    path.write_text("".join(f"{device.hex().upper()} {area}\n" for device, area in areas.items()))


def check_issuances(deployment: Deployment, received: dict[str, set[bytes]]) -> Counter[str]:
    """Every request has one issuance, applied, whose one signature (one command.issued) is the bytes every
    run received; no (generation, counter) twice. The issuances' statuses, counted."""
    rows = [r for r in deployment.issuance_rows() if r.request_id in received]
    by_request = Counter(r.request_id for r in rows)
    assert set(by_request) == set(received) and set(by_request.values()) == {1}, by_request
    issued = Counter(e.subject for e in deployment.audit_events("command.issued"))
    for row in rows:
        assert issued[f"issuance:{row.issuance_id}"] == 1, f"issuance {row.issuance_id} signed twice"
        assert received[row.request_id] == {bytes(row.signed_command)}, f"request {row.request_id}"
    counters = Counter((r.generation, int(r.counter)) for r in deployment.issuance_rows())
    assert max(counters.values()) == 1, "a counter was used twice"
    return Counter(r.status for r in rows)


def check_meters_applied_once(meters: dict[bytes, SimulatedDevice], deployment: Deployment) -> None:
    """Each meter's anti-replay counter for vanilla generation 1 is its command's counter: it applied that
    command and no other."""
    counter_of = {bytes(r.device_id): int(r.counter) for r in deployment.issuance_rows() if r.device_id}
    for device_id, meter in meters.items():
        assert meter.originator_counters.get(vanilla_entity_id(1)) == counter_of[device_id], device_id.hex()


@dataclass
class TrayBench:
    """bench-01 running one tray of fresh meters as `vdno-bench hand-out --tray` does, with its journal."""

    deployment: Deployment
    transport: InProcessTransport
    areas: dict[bytes, int]
    tray: Path
    runs: list[list[HandOutResult]] = field(default_factory=list)
    started: int = 0  # meters begun, over every run

    def run(self, attempts: int = ATTEMPTS) -> list[HandOutResult]:
        """One run; `attempts` 1: a bench that gives up at the first UNAVAILABLE (stopped with the server)."""
        journal = TrayJournal.open(self.tray, "hand-out")
        with self.deployment.client("bench-01", attempts=attempts) as api:
            try:
                bundle = api.trust_bundle()
            except BenchError:  # the server stayed away longer than the retry budget: the rerun does it
                self.runs.append([])
                return []
            results = run_tray(
                journal, list(self.areas), lambda d, rid: self._one(api, bundle, d, rid), APPLIED
            )
        self.runs.append(results)
        return results

    def _one(self, api: Any, bundle: Any, device_id: bytes, request_id: str) -> HandOutResult:
        self.started += 1
        area = self.areas[device_id]
        return hand_out(api, self.transport, bundle, device_id, area, request_id, gateway=self.deployment.dcc)

    def applied(self) -> bool:
        last = self.runs[-1] if self.runs else []
        return len(last) == len(self.areas) and all(r.status == APPLIED for r in last)


def test_server_killed_at_random_points_in_a_tray_then_rerun(deployment: Deployment, tmp_path: Path) -> None:
    seed = int(os.environ.get("VDNO_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    meters: dict[bytes, SimulatedDevice] = {}
    received: dict[str, set[bytes]] = {}
    reruns = unfinished = during = 0
    for round_number in range(ROUNDS):
        transport, device_ids = deployment.meters(METERS)
        meters.update(transport.devices)
        bench = TrayBench(
            deployment,
            transport,
            {d: rng.choice(AREAS) for d in device_ids},
            tmp_path / f"tray-{round_number}",
        )
        write_tray(bench.tray, bench.areas)
        # Every other round the bench gives up at once (as if stopped with the server); the others ride the
        # restart out on their retry budget.
        thread = threading.Thread(target=bench.run, args=(ATTEMPTS if round_number % 2 else 1,))
        thread.start()
        # A random point in the tray: while the k-th meter is read, requested, signed, applied or reported.
        k, deadline = rng.randrange(METERS), time.monotonic() + 30
        while bench.started <= k and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, KILL_JITTER))
        during += thread.is_alive()
        kill_server(deployment)
        deployment.server.start()
        thread.join(120)
        unfinished += not bench.applied()
        for _ in range(RERUNS):
            if bench.applied():
                break
            reruns += 1
            bench.run()
        assert bench.applied(), (seed, [r.reason for r in bench.runs[-1]])
        for result in (r for results in bench.runs for r in results):
            if result.command is not None:
                received.setdefault(result.request_id, set()).add(result.command)

    assert record_mismatches(deployment, meters) == [], seed
    ours = {f"issuance:{r.issuance_id}" for r in deployment.issuance_rows() if r.request_id in received}
    abandoned = sum(e.subject in ours for e in deployment.audit_events("command.failed"))
    by_answer = sum(
        e.subject in ours and json.loads(e.details)["evidence"] == "credentials"
        for e in deployment.audit_events("outcome.reported")
    )
    statuses = check_issuances(deployment, received)
    assert statuses == Counter({"applied": ROUNDS * METERS}), (seed, statuses)
    check_meters_applied_once(meters, deployment)
    print(
        f"{deployment.backend}: seed {seed}, {ROUNDS} kills ({during} while the tray ran) in trays of "
        f"{METERS}, {unfinished} runs cut short, {reruns} reruns, {by_answer} outcomes recorded from the "
        f"meter's CS02a answer, {abandoned} attempts abandoned then finished; records match cells, 0 "
        "duplicate signatures, 0 reused counters"
    )


class KillingTray(Tray):
    """The tray server's handler: once `victim` has processed a CS02b command (applied it, answer ready),
    SIGKILL the bench process before the answer leaves: the bench dies between applying and reporting."""

    def __init__(self, devices: list[SimulatedDevice], victim: bytes) -> None:
        super().__init__(devices)
        self.victim = victim
        self.bench_pid: int | None = None
        self.commands: Counter[bytes] = Counter()

    def handle(self, body: bytes) -> bytes:
        reply = super().handle(body)
        if body[:1] == bytes([OP_SEND]) and reply[:1] == bytes([RESP_GBCS]):
            device = body[1 : 1 + DEVICE_ID_LEN]
            code = decode_message(body[1 + DEVICE_ID_LEN :]).apdu.header.message_code
            if code == MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
                self.commands[device] += 1
                if device == self.victim and self.bench_pid is not None:
                    os.kill(self.bench_pid, signal.SIGKILL)
                    self.bench_pid = None
        return reply


@pytest.fixture
def dcc_url(deployment: Deployment) -> Iterator[str]:
    with deployment.dcc_server() as url:
        yield url


def test_bench_killed_between_apply_and_report_then_rerun(
    deployment: Deployment, tmp_path: Path, dcc_url: str
) -> None:
    transport, device_ids = deployment.meters(4)
    victim = device_ids[1]
    killing = KillingTray(list(transport.devices.values()), victim)
    tray_server = TrayServer(killing)
    port = tray_server.start()
    tray = tmp_path / "tray.txt"
    write_tray(tray, dict(zip(device_ids, (11, 12, 13, 14), strict=True)))
    args = [
        str(BIN / "vdno-bench"), "hand-out", "--tray", str(tray), "--json",
        "--server", deployment.target, "--server-name", "localhost", "--ca", str(deployment.tls_ca),
        "--cert", str(deployment.bench_cert("bench-01")), "--key", str(deployment.bench_key("bench-01")),
        "--sim", f"127.0.0.1:{port}", "--dcc", dcc_url,
    ]  # fmt: skip
    try:
        killed = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killing.bench_pid = killed.pid
        killed.communicate(timeout=120)
        assert killed.returncode == -signal.SIGKILL
        # The victim applied its command; the custodian has not heard of it: its command is outstanding.
        [row] = [r for r in deployment.issuance_rows() if bytes(r.device_id) == victim]
        assert row.status == "signed"
        journal = tray.with_name("tray.txt.hand-out.journal").read_text().splitlines()
        ended = [json.loads(line)["status"] for line in journal[1:]]
        assert ended == [APPLIED]  # the first meter; the victim's run never ended

        rerun = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    finally:
        tray_server.stop()
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    results = {r["device"]: r for r in json.loads(rerun.stdout)["meters"]}
    assert {r["status"] for r in results.values()} == {APPLIED}
    assert results[victim.hex()]["reason"] == ALREADY_APPLIED
    assert results[victim.hex()]["requestId"] == row.request_id  # the journal's run: the same request id
    assert all(killing.commands[d] == 1 for d in device_ids), killing.commands  # each sent its command once
    assert record_mismatches(deployment, transport.devices) == []
    received = {r["requestId"]: {bytes.fromhex(r["command"])} for r in results.values()}
    assert check_issuances(deployment, received) == Counter({"applied": 4})
