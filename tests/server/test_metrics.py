"""ServerMetrics: what each family counts, the /metrics listener over real HTTP, and several processes
writing their values into files that the parent serves combined (prometheus-client's multiprocess mode,
in real subprocesses)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import PIPE

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from vdno.server.config import ConfigError, MetricsConfig
from vdno.server.domain.custody import GenerationView
from vdno.server.domain.ports import IssuanceOutcome
from vdno.server.domain.values import BenchOperation, GenerationRecord, GenerationStatus
from vdno.server.health import HSM, HealthReport
from vdno.server.metrics import MetricsListener, ProcessesCollector, ServerMetrics

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def view(generation: int, not_after: datetime | None) -> GenerationView:
    record = GenerationRecord(
        generation, bytes(8), "pkcs11:object=ds", "pkcs11:object=ka", GenerationStatus.ACTIVE, False, NOW
    )
    return GenerationView(replace(record, not_after=not_after), None)


def test_each_family_counts_what_it_is_told() -> None:
    metrics = ServerMetrics(CollectorRegistry(), clock=lambda: NOW)
    value = metrics.registry.get_sample_value
    for _ in range(3):
        metrics.issuance(BenchOperation.HAND_OUT, IssuanceOutcome.SIGNED, 2)
    metrics.issuance(BenchOperation.ROTATION, IssuanceOutcome.FAILED, 1)
    metrics.issuance(BenchOperation.HAND_OUT, IssuanceOutcome.REFUSED, None)
    assert value("vdno_issuances_total", {"kind": "hand-out", "outcome": "signed", "generation": "2"}) == 3
    assert value("vdno_issuances_total", {"kind": "rotation", "outcome": "failed", "generation": "1"}) == 1
    assert (
        value("vdno_issuances_total", {"kind": "hand-out", "outcome": "refused", "generation": "none"}) == 1
    )
    metrics.step(5, 0.004, True)
    metrics.step(0, 0.002, True)  # a step that only stored the previous step's signatures
    metrics.step(2, 0.5, False)
    assert value("vdno_pipeline_step_requests_count") == 2
    assert value("vdno_pipeline_step_requests_sum") == 7
    assert value("vdno_pipeline_step_requests_bucket", {"le": "4.0"}) == 1
    assert value("vdno_database_write_seconds_count", {"result": "ok"}) == 2
    assert value("vdno_database_write_seconds_count", {"result": "error"}) == 1
    metrics.hsm_job(0.003, 5, None)
    metrics.hsm_job(0.2, 2, "HsmUnavailable")
    metrics.hsm_signature_rejected()
    assert value("vdno_hsm_sign_seconds_count") == 2
    assert value("vdno_hsm_sign_seconds_sum") == pytest.approx(0.203)
    assert value("vdno_hsm_sign_errors_total", {"error": "HsmUnavailable"}) == 1
    assert value("vdno_hsm_sign_errors_total", {"error": "SignatureCheckFailed"}) == 1
    assert metrics.latency("/vdno.v1.BenchService/GetTrustBundle") is None  # only hand-outs are timed
    timed = metrics.latency("/vdno.v1.BenchService/RequestRotation")
    assert timed is not None
    timed(0.07)
    assert value("vdno_hand_out_seconds_bucket", {"kind": "rotation", "le": "0.05"}) == 0
    assert value("vdno_hand_out_seconds_bucket", {"kind": "rotation", "le": "0.1"}) == 1
    metrics.health(HealthReport({HSM: "the token is away"}))
    assert (value("vdno_up", {"component": "hsm"}), value("vdno_up", {"component": "database"})) == (0, 1)
    metrics.health(HealthReport({}))
    assert value("vdno_up", {"component": "hsm"}) == 1
    metrics.audit_head(41)
    assert value("vdno_audit_head_sequence") == 41


def test_expiry_days_follow_the_certificates_and_a_generation_that_stops_signing_is_dropped() -> None:
    metrics = ServerMetrics(CollectorRegistry(), clock=lambda: NOW)
    value = metrics.registry.get_sample_value
    metrics.generations_expiry(
        [view(1, NOW + timedelta(days=20, hours=12)), view(2, NOW + timedelta(days=700)), view(3, None)]
    )
    assert value("vdno_generation_expiry_days", {"generation": "1"}) == 20.5
    assert value("vdno_generation_expiry_days", {"generation": "2"}) == 700
    assert value("vdno_generation_expiry_days", {"generation": "3"}) is None  # no certificates yet
    metrics.generations_expiry([view(2, NOW + timedelta(days=700))])  # generation 1 was disabled
    assert value("vdno_generation_expiry_days", {"generation": "1"}) is None
    assert value("vdno_generation_expiry_days", {"generation": "2"}) == 700


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_listener_serves_the_registry_over_http_and_a_taken_port_is_a_config_error() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.refused("WrongRole", "PERMISSION_DENIED")
    listener = MetricsListener(MetricsConfig(listen="127.0.0.1:0"), metrics.registry)
    try:
        assert listener.port > 0
        samples = scrape(listener.port)
        assert (
            samples[("vdno_refused_calls_total", (("code", "PERMISSION_DENIED"), ("reason", "WrongRole")))]
            == 1
        )
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = f"127.0.0.1:{taken.getsockname()[1]}"
            with pytest.raises(ConfigError, match=rf"\[metrics\] listen: cannot listen on {busy}"):
                MetricsListener(MetricsConfig(listen=busy), CollectorRegistry())
    finally:
        listener.stop()


_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from vdno.server.metrics import use_values
    use_values(Path(sys.argv[1]))
    from prometheus_client import CollectorRegistry
    from vdno.server.domain.ports import IssuanceOutcome
    from vdno.server.domain.values import BenchOperation
    from vdno.server.metrics import ServerMetrics
    metrics = ServerMetrics(CollectorRegistry())
    for _ in range(int(sys.argv[2])):
        metrics.issuance(BenchOperation.HAND_OUT, IssuanceOutcome.SIGNED, 1)
        metrics.step(1, 0.01, True)
    sys.stdin.readline()  # the test says when
    metrics.audit_head(int(sys.argv[3]))
    """
)


def test_processes_write_their_values_to_files_that_the_parent_serves_combined(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-c", _WORKER, str(tmp_path)]
    workers = [
        subprocess.Popen([*command, str(count), str(head)], cwd=root, text=True, stdin=PIPE, stderr=PIPE)
        for count, head in ((3, 18), (4, 17))
    ]
    for worker in workers:  # one after the other: the second's audit head is the most recent
        _, errors = worker.communicate("go\n", timeout=60)
        assert worker.returncode == 0, errors[-2000:]
    pids = {w.pid for w in workers}
    assert {int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("counter_*.db")} == pids
    registry = CollectorRegistry()
    registry.register(ProcessesCollector(tmp_path, lambda: []))
    value = registry.get_sample_value
    assert value("vdno_issuances_total", {"kind": "hand-out", "outcome": "signed", "generation": "1"}) == 7
    assert value("vdno_pipeline_step_requests_count") == 7
    assert value("vdno_database_write_seconds_sum", {"result": "ok"}) == pytest.approx(0.07)
    assert value("vdno_audit_head_sequence") == 17  # the most recent, not the largest
    # Once both processes have ended, their live gauges are dropped; their counts stay.
    ended = CollectorRegistry()
    ended.register(ProcessesCollector(tmp_path, lambda: pids))
    assert ended.get_sample_value("vdno_audit_head_sequence") is None
    assert ended.get_sample_value("vdno_pipeline_step_requests_count") == 7


def test_the_sample_dashboard_is_json_with_a_panel_for_every_family_on_the_chosen_datasource() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "vdno-dashboard.json"
    dashboard = json.loads(path.read_text())
    [datasource] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
    exprs = []
    for panel in panels:
        assert panel["datasource"]["uid"] == f"${{{datasource['name']}}}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'job=~"$job"' in target["expr"], target["expr"]
            exprs.append(target["expr"])
    families = {family.name for family in ServerMetrics(CollectorRegistry()).registry.collect()}
    assert len(families) == 10
    for family in families:  # counters are named with _total, histograms by their series
        assert any(re.search(rf"\b{family}(_total|_bucket|_sum|_count)?\{{", e) for e in exprs), family
