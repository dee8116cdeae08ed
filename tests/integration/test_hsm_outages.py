"""The HSM comes and goes and the service stays up: the real server (subprocess, mTLS, SoftHSM token)
while four benches keep handing out fresh simulated vanilla meters, retrying UNAVAILABLE answers with
the same request id. The token is taken away (its directory moved out of SoftHSM's token dir) for about
1 s and 5 s, and SoftHSM's configuration is pointed elsewhere. Each time: calls answer UNAVAILABLE at once,
health says NOT_SERVING, the service recovers without a restart within the reconnection backoff, and
no issuance is lost, duplicated or left FAILED."""

from __future__ import annotations

import json
import time

import pytest
from integration_testlib import (
    BenchLoad,
    Deployment,
    HealthTimeline,
    health_of,
    log_events,
    set_config,
    token_away,
)

from vdno.client.checks import check_command

# [hsm] reconnect_max of this deployment (default 5 s): reconnection attempts 0, 0.2, 0.4, 0.8, 1 ... s apart
RECONNECT_MAX = 1.0
RECOVERY_BOUND = RECONNECT_MAX + 0.6  # token back -> a signed hand-out: one backoff step, a bench retry


def prepare_database(deployment: Deployment) -> None:
    """Run by the deployment fixture before the server starts."""
    set_config(deployment.state, "hsm", "reconnect_max", str(RECONNECT_MAX))


def check_every_request_signed_once(deployment: Deployment, load: BenchLoad) -> list[int]:
    """No issuance lost, none duplicated, none left FAILED, every command verifies; returns the ids of the
    issuances that failed at least once and were finished under their recorded counter."""
    done = {(d.bench, d.request_id): d for d in load.done}
    assert len(done) == len(load.done) > 0
    rows = {(r.bench_id, r.request_id): r for r in deployment.issuance_rows()}
    rows = {key: row for key, row in rows.items() if key in done}
    assert set(rows) == set(done)  # every request the benches made is recorded, once (the id is unique)
    for key, handed_out in done.items():
        row = rows[key]
        assert row.status == "signed", f"{key} left {row.status}"
        assert (row.issuance_id, row.counter) == (handed_out.issuance_id, handed_out.counter)
        assert bytes(row.signed_command) == handed_out.command
    counters = [(r.generation, r.counter) for r in rows.values()]
    assert len(set(counters)) == len(counters)
    events: dict[str, list[tuple[str, dict[str, object]]]] = {}
    for e in deployment.audit_events():
        events.setdefault(e.subject, []).append((e.event, json.loads(e.details)))
    finished_after_failing = []
    for row in rows.values():
        history = events[f"issuance:{row.issuance_id}"]
        [recorded] = [d for name, d in history if name == "command.recorded"]
        [issued] = [d for name, d in history if name == "command.issued"]  # one signature per issuance
        assert recorded["counter"] == issued["counter"] == row.counter
        if any(name == "command.failed" for name, _ in history):
            finished_after_failing.append(row.issuance_id)
    with deployment.client() as api:
        bundle = api.trust_bundle()
    for handed_out in done.values():  # signature (with `cryptography`), device, area, counter
        checked = check_command(handed_out.command, handed_out.device_id, handed_out.area_id, bundle)
        assert checked.counter == handed_out.counter
    return finished_after_failing


@pytest.mark.parametrize("outage", [1.0, 5.0], ids=["1s", "5s"])
def test_token_taken_away_and_back_while_benches_hand_out(deployment: Deployment, outage: float) -> None:
    port = deployment.server.health_port
    with HealthTimeline(port) as timeline, BenchLoad(deployment) as load:
        time.sleep(0.3)
        assert load.done and not load.unavailable_at  # signing before the outage
        with token_away(deployment.state):
            away = time.monotonic()
            time.sleep(outage)
        back = time.monotonic()
        recovered_in = load.signed_after(back, within=RECOVERY_BOUND + 2)
        time.sleep(0.3)
    health = [(round(t - away, 2), status) for t, status in timeline.changes]
    print(
        f"\n{outage:.0f} s outage: {len(load.done)} signed, {len(load.unavailable_at)} UNAVAILABLE answers, "
        f"first signature {recovered_in:.2f} s after the token was back; health (s after away) {health}"
    )
    # Calls failed only while the token was away (and until the reconnection that followed).
    assert load.unavailable_at
    assert all(away <= t <= back + RECOVERY_BOUND for t in load.unavailable_at)
    assert recovered_in <= RECOVERY_BOUND
    # Health told the truth: NOT_SERVING during the outage, SERVING again after it.
    not_serving = timeline.first("NOT_SERVING", after=away)
    serving = timeline.first("SERVING", after=back)
    assert not_serving is not None and not_serving < back
    assert serving is not None and serving - back <= RECOVERY_BOUND
    assert timeline.changes[-1][1] == "SERVING"
    finished = check_every_request_signed_once(deployment, load)
    assert finished, "the requests caught by the outage failed and were finished by their retries"
    # The process was not restarted: the same server answered throughout.
    assert deployment.server.proc is not None and deployment.server.proc.poll() is None


def test_softhsm_configured_elsewhere_is_an_outage_until_the_configuration_is_back(
    deployment: Deployment,
) -> None:
    port = deployment.server.health_port
    conf = deployment.state / "softhsm2.conf"
    original = conf.read_text()
    elsewhere = original.replace(str(deployment.state / "tokens"), str(deployment.state / "no-tokens-here"))
    assert elsewhere != original
    with HealthTimeline(port) as timeline, BenchLoad(deployment, threads=2) as load:
        time.sleep(0.3)
        conf.write_text(elsewhere)
        # SoftHSM reads its configuration at C_Initialize: the running module keeps the old one until it
        # is initialised again. A short removal of the token makes the signer reconnect, and its
        # reinitialisation reads the new configuration: the token stays unreachable after it is back.
        with token_away(deployment.state):
            time.sleep(0.3)
        back = time.monotonic()
        time.sleep(RECONNECT_MAX + 0.4)
        assert health_of(port) == "NOT_SERVING"
        assert (health_of(port, "vdno.hsm"), health_of(port, "vdno.database")) == ("NOT_SERVING", "SERVING")
        assert any(t > back + RECONNECT_MAX for t in load.unavailable_at)  # the token is back, not the HSM
        conf.write_text(original)
        fixed = time.monotonic()
        recovered_in = load.signed_after(fixed, within=RECOVERY_BOUND + 2)
        time.sleep(0.3)
    print(f"\nconfiguration elsewhere: first signature {recovered_in:.2f} s after it was restored")
    assert recovered_in <= RECOVERY_BOUND
    serving = timeline.first("SERVING", after=fixed)
    assert serving is not None and serving - fixed <= RECOVERY_BOUND
    check_every_request_signed_once(deployment, load)
    events = log_events(deployment.log_text())
    reasons = [e.get("reason", "") for e in events if e["event"] == "hsm.reconnect_failed"]
    assert any("cannot initialise the PKCS#11 module" in r for r in reasons)
    changes = [e for e in events if e["event"] == "health.changed"]
    assert any("vdno.hsm" in e["down"] for e in changes) and changes[-1]["status"] == "SERVING"
