"""HealthMonitor, HealthBoard and ProcessesHealth (server/health.py): what a probe's outcome, a hanging
probe, a poke and several processes' states make of the grpc.health.v1 statuses. The probes here are
plain functions (the real ones, signer.probe and store.check_writable, are exercised against SoftHSM and
SQLite in tests/server/hsm, tests/server/store and the integration tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from multiprocessing import RawArray

import pytest
from grpc_health.v1 import health, health_pb2

from vdno.server.domain.errors import HsmUnavailable, StoreUnavailable
from vdno.server.health import (
    COMPONENTS,
    DATABASE,
    HSM,
    HealthBoard,
    HealthMonitor,
    HealthReport,
    HealthSlots,
    ProcessesHealth,
)


class Switch:
    """A probe whose outcome the test sets: an error to raise, or a gate that holds it (a hang)."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        self.gate.wait()
        if self.error is not None:
            raise self.error


def wait_until(condition, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def monitor() -> Iterator[tuple[HealthMonitor, Switch, Switch, list[HealthReport]]]:
    hsm, db = Switch(), Switch()
    reports: list[HealthReport] = []
    m = HealthMonitor({HSM: hsm, DATABASE: db}, reports.append, interval=0.05, stall_after=0.3)
    yield m, hsm, db, reports
    hsm.gate.set()
    db.gate.set()
    m.close()


def test_a_failing_probe_makes_its_component_down_with_its_message_until_it_passes(monitor) -> None:
    m, hsm, _, reports = monitor
    assert m.check_now().serving and reports == [HealthReport({})]
    m.start()
    hsm.error = HsmUnavailable("PKCS#11 token 'vdno' is unavailable (signing failed); retry later")
    wait_until(lambda: not reports[-1].serving)
    assert reports[-1].down == {HSM: "PKCS#11 token 'vdno' is unavailable (signing failed); retry later"}
    time.sleep(0.2)  # more probes, same outcome: nothing new is published
    assert len(reports) == 2
    hsm.error = None
    wait_until(lambda: reports[-1].serving)
    assert len(reports) == 3


def test_a_hanging_probe_counts_as_down_and_does_not_hold_up_the_other(monitor) -> None:
    m, hsm, db, reports = monitor
    m.check_now()
    m.start()
    db.gate.clear()  # the database probe hangs (a write waiting for a lock)
    wait_until(lambda: DATABASE in reports[-1].down)
    assert reports[-1].down[DATABASE].startswith("the check has not answered for")
    hsm.error = HsmUnavailable("token gone")
    wait_until(lambda: HSM in reports[-1].down)  # judged while the other probe still hangs
    db.gate.set()
    hsm.error = None
    wait_until(lambda: reports[-1].serving)


def test_a_poke_probes_at_once() -> None:
    probe = Switch()
    m = HealthMonitor({HSM: probe}, lambda report: None, interval=60)
    try:
        m.start()
        wait_until(lambda: probe.calls == 1)
        m.poke(HSM)
        wait_until(lambda: probe.calls == 2, within=1.0)
    finally:
        m.close()


def test_an_unexpected_probe_error_is_named_without_its_text() -> None:
    def broken() -> None:
        raise RuntimeError("secret detail")

    reports: list[HealthReport] = []
    HealthMonitor({DATABASE: broken}, reports.append).check_now()
    assert reports[-1].down == {DATABASE: "the check failed (RuntimeError)"}


def status(servicer: health.HealthServicer, service: str) -> str:
    reply = servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_the_board_sets_the_service_and_each_component() -> None:
    servicer = health.HealthServicer()
    board = HealthBoard(servicer, ("vdno.v1.BenchService",), source="test")
    names = ("", "vdno.v1.BenchService", *COMPONENTS)
    assert [status(servicer, n) for n in names] == ["NOT_SERVING"] * 4  # until the first report
    board.publish(HealthReport({DATABASE: str(StoreUnavailable("the database's write lock was not free"))}))
    assert [status(servicer, n) for n in names] == ["NOT_SERVING", "NOT_SERVING", "SERVING", "NOT_SERVING"]
    board.publish(HealthReport({}))
    assert [status(servicer, n) for n in names] == ["SERVING"] * 4


def test_several_processes_serve_only_while_each_one_runs_and_is_up() -> None:
    shared = RawArray("b", 2 * len(COMPONENTS))
    running = [True, True]
    combined = ProcessesHealth(shared, lambda: running, lambda report: None)
    assert set(combined.report().down) == set(COMPONENTS)  # nothing reported yet
    HealthSlots(shared, 0).publish(HealthReport({}))
    HealthSlots(shared, 1).publish(HealthReport({HSM: "token gone"}))
    assert combined.report().down == {HSM: "not serving in server process 1 of 2"}
    HealthSlots(shared, 1).publish(HealthReport({}))
    assert combined.report().serving
    running[0] = False  # a process that died counts as down, whatever it reported last
    assert set(combined.report().down) == set(COMPONENTS)
