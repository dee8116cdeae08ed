"""Metrics and logs of the real service (subprocess, mTLS, SoftHSM): /metrics scraped over HTTP after
hand-outs, a refused call and an HSM outage (the token's directory moved away) moves as it must; two
server processes are served summed by the parent; "" disables the listener; the start-up, per-call and
shutdown log lines are JSON and carry what they must, and never the PIN."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime

import grpc
from cryptography import x509
from integration_testlib import (
    Deployment,
    hand_out_request,
    log_events,
    new_request_id,
    request_command,
    rpc_error,
    set_config,
    token_away,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from scripts.lab_service import free_port
from vdno.client.handout import read_meter

HEALTH_INTERVAL = 0.5  # [server] health_interval of this deployment: the up gauges and the audit head
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def prepare_database(deployment: Deployment) -> None:
    """Run by the deployment fixture before the server starts."""
    set_config(deployment.state, "server", "health_interval", str(HEALTH_INTERVAL))
    set_config(deployment.state, "hsm", "reconnect_max", "1.0")


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        body = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_for_value(port: int, name: str, expected: float, within: float, **labels: str) -> None:
    deadline = time.monotonic() + within
    while (seen := value(scrape(port), name, **labels)) != expected:
        assert time.monotonic() < deadline, f"{name}{labels} still {seen} after {within} s, not {expected}"
        time.sleep(0.05)


def audit_head(deployment: Deployment) -> int:
    with deployment.engine() as engine, engine.connect() as conn:
        return int(conn.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar_one())


def ensure_server(deployment: Deployment, **env: str) -> None:
    """The deployment's server running with exactly this extra environment (restarted if it differs)."""
    wanted = {**deployment.server_env, "GRPC_VERBOSITY": "INFO", **env}
    if deployment.server.extra_env != wanted or deployment.server.proc is None:
        deployment.server.stop()
        deployment.server.extra_env = wanted
        deployment.server.start()


def test_hand_outs_a_refusal_and_an_hsm_outage_move_the_metrics(deployment: Deployment) -> None:
    ensure_server(deployment)
    port = deployment.server.metrics_port
    assert port and port not in (deployment.server.port, deployment.server.health_port)
    before = scrape(port)
    signed = {"kind": "hand-out", "outcome": "signed", "generation": "1"}
    transport, devices = deployment.meters(4)
    for device in devices[:3]:
        request_command(deployment, transport, device, 14)
    in_service, [commissioned] = deployment.commissioned_meters([12])
    channel, stub = deployment.stub()
    with channel:
        refused = hand_out_request(read_meter(in_service, commissioned), commissioned, 12, new_request_id())
        error = rpc_error(lambda: stub.RequestHandOut(refused, timeout=10))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        after = scrape(port)
        assert grew(after, before, "vdno_issuances_total", **signed) == 3
        refusal = {"kind": "hand-out", "outcome": "refused", "generation": "none"}
        assert grew(after, before, "vdno_issuances_total", **refusal) == 1
        refused_call = {"reason": "DeviceNotVanilla", "code": "FAILED_PRECONDITION"}
        assert grew(after, before, "vdno_refused_calls_total", **refused_call) == 1
        assert value(after, "vdno_up", component="hsm") == value(after, "vdno_up", component="database") == 1

        # The HSM goes away: vdno_up says so, a hand-out fails in the HSM, and is finished once it is back.
        outage = hand_out_request(read_meter(transport, devices[3]), devices[3], 15, new_request_id())
        with token_away(deployment.state):
            wait_for_value(port, "vdno_up", 0, within=5 * HEALTH_INTERVAL + 3, component="hsm")
            error = rpc_error(lambda: stub.RequestHandOut(outage, timeout=10))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        wait_for_value(port, "vdno_up", 1, within=5, component="hsm")
        reply = stub.RequestHandOut(outage, timeout=10)  # the same request id
    assert reply.originator_counter > 0
    end = scrape(port)
    assert grew(end, before, "vdno_issuances_total", **signed) == 4  # three, and the one caught by the outage
    for outcome in ("failed", "retry"):
        assert (
            grew(end, before, "vdno_issuances_total", kind="hand-out", outcome=outcome, generation="1") == 1
        )
    assert grew(end, before, "vdno_hsm_sign_errors_total", error="HsmUnavailable") == 1
    assert grew(end, before, "vdno_refused_calls_total", reason="HsmUnavailable", code="UNAVAILABLE") == 1
    assert grew(end, before, "vdno_hand_out_seconds_count", kind="hand-out") == 4  # the calls answered OK
    assert grew(end, before, "vdno_hand_out_seconds_sum", kind="hand-out") > 0
    # Every request was taken into exactly one step (the retry twice: its request id, then its finishing).
    assert grew(end, before, "vdno_pipeline_step_requests_sum") == 3 + 1 + 1 + 2
    assert 1 <= grew(end, before, "vdno_pipeline_step_requests_count") <= 7
    assert grew(end, before, "vdno_hsm_sign_seconds_count") >= 3
    assert grew(end, before, "vdno_hsm_sign_seconds_sum") > 0
    assert grew(end, before, "vdno_database_write_seconds_count", result="ok") >= 4
    assert grew(end, before, "vdno_database_write_seconds_count", result="error") == 0
    # The audit head is the database's (read by the database probe every HEALTH_INTERVAL seconds).
    wait_for_value(port, "vdno_audit_head_sequence", audit_head(deployment), within=5 * HEALTH_INTERVAL + 2)
    # Days to expiry: the earlier of generation 1's certificates.
    certificates = [x509.load_der_x509_certificate(c) for c in deployment.vanilla_certificates(1)]
    not_after = min(c.not_valid_after_utc for c in certificates)
    days = (not_after - datetime.now(UTC)).total_seconds() / 86400
    assert abs(value(end, "vdno_generation_expiry_days", generation="1") - days) < 0.01


def test_log_lines_are_json_with_the_call_the_start_up_and_the_shutdown_and_never_the_pin(
    deployment: Deployment,
) -> None:
    ensure_server(deployment)
    log_start = deployment.server.log_path.stat().st_size
    transport, [device] = deployment.meters(1)
    request_id = new_request_id()
    request_command(deployment, transport, device, 21, request_id=request_id)
    # A restart with the metrics listener disabled: the shutdown of this server, the start-up of the next.
    ensure_server(deployment, VDNO_METRICS_LISTEN="")
    assert deployment.server.metrics_port == 0
    log_text = deployment.log_text()[log_start:]
    lines = [line for line in log_text.splitlines() if line.strip()]
    assert all(json.loads(line) for line in lines)  # every line is one JSON object
    events = log_events(log_text)
    [ok] = [e for e in events if e["event"] == "rpc.ok" and e.get("request_id") == request_id]
    assert ok["method"] == "/vdno.v1.BenchService/RequestHandOut" and ok["caller"] == "bench:bench-01"
    assert (ok["device"], ok["area"]) == (device.hex().upper(), 21)
    names = [e["event"] for e in events]
    assert names.index("server.stopping") < names.index("server.stopped") < names.index("server.starting")
    [stopping] = [e for e in events if e["event"] == "server.stopping"]
    assert stopping["signal"] == "SIGTERM"
    [starting] = [e for e in events if e["event"] == "server.starting"]
    assert starting["database"] == deployment.database_url and starting["processes"] == 1
    assert (starting["hsm_token"], starting["metrics_listen"]) == ("vdno", "")
    assert starting["hsm_module"].endswith(".so") and starting["listen"] == "127.0.0.1:0"
    [started] = [e for e in events if e["event"] == "server.started"][-1:]
    assert started["listen"] == f"127.0.0.1:{deployment.server.port}" and started["metrics_port"] is None
    assert started["health_port"] == deployment.server.health_port
    # The migration at start-up logs through the same JSON lines, before the server has started.
    migration = [i for i, e in enumerate(events) if e.get("logger") == "alembic.runtime.migration"]
    assert migration and names.index("server.starting") < migration[0] < events.index(started)
    pin = (deployment.state / "secrets" / "user.pin").read_text().strip()
    assert pin and pin not in log_text


def test_two_processes_are_served_summed_by_the_parent(deployment: Deployment) -> None:
    ensure_server(deployment, VDNO_PROCESSES="2", VDNO_LISTEN=f"127.0.0.1:{free_port()}")
    port = deployment.server.metrics_port
    wait_for_value(port, "vdno_up", 1, within=10, component="hsm")
    wait_for_value(port, "vdno_up", 1, within=5, component="database")
    log_start = deployment.server.log_path.stat().st_size
    before = scrape(port)
    transport, devices = deployment.meters(24)
    done = 0
    served_by: set[str] = set()
    while len(served_by) < 2 and done < len(devices):
        for device in devices[done : done + 6]:  # a new connection per call: the kernel spreads them
            request_command(deployment, transport, device, 17)
        done += 6
        served_by = {
            e["rpc_id"][:12]  # random per process (server/rpc/interceptors.py)
            for e in log_events(deployment.log_text()[log_start:])
            if e["event"] == "rpc.ok" and e["method"].endswith("/RequestHandOut")
        }
    assert len(served_by) == 2, f"all {done} hand-outs reached the same process"
    after = scrape(port)
    signed = {"kind": "hand-out", "outcome": "signed", "generation": "1"}
    assert grew(after, before, "vdno_issuances_total", **signed) == done
    assert grew(after, before, "vdno_hand_out_seconds_count", kind="hand-out") == done
    assert grew(after, before, "vdno_pipeline_step_requests_sum") == done
    # The parent combines: one series per component (no pid label), set from the combined health.
    up = sorted(dict(labels)["component"] for name, labels in after if name == "vdno_up")
    assert up == ["database", "hsm"] and value(after, "vdno_up", component="hsm") == 1
    wait_for_value(port, "vdno_audit_head_sequence", audit_head(deployment), within=5 * HEALTH_INTERVAL + 2)
    assert [labels for name, labels in after if name == "vdno_generation_expiry_days"] == [
        frozenset({("generation", "1")})
    ]
