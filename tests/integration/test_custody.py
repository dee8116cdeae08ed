"""Custody (docs/architecture.md §5.1, §5.8): the vanilla private keys were generated in the token and cannot
leave it; the running service keeps its PIN out of argv and out of its log, and PKCS#11 codes out of both the
log and what clients see."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from integration_testlib import Deployment, hand_out_request, new_request_id, read_key_attributes, rpc_error

from vdno.client.handout import APPLIED, hand_out, read_meter


@pytest.fixture(scope="module")
def activity(deployment: Deployment) -> list[str]:
    """A hand-out and a refused request through the service; the refusal's message."""
    transport, [meter, other] = deployment.meters(2)
    with deployment.client() as api:
        result = hand_out(api, transport, api.trust_bundle(), meter, 20, gateway=deployment.dcc)
    assert result.status == APPLIED, result.reason
    channel, stub = deployment.stub()
    with channel:
        request = hand_out_request(read_meter(transport, other), other, 21, new_request_id())
        request.area_id = 7
        error = rpc_error(lambda: stub.RequestHandOut(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    return [error.details()]


@pytest.mark.parametrize("label", ["vanilla-g1-ds", "vanilla-g1-ka"])
def test_vanilla_private_keys_are_sensitive_and_never_extractable(
    deployment: Deployment, softhsm_module: Path, label: str
) -> None:
    attributes = read_key_attributes(deployment.state, softhsm_module, [label])[label]
    assert attributes["label"] == label
    assert attributes["sensitive"] is True
    assert attributes["always_sensitive"] is True
    assert attributes["extractable"] is False
    assert attributes["never_extractable"] is True
    assert attributes["token"] is True
    assert attributes["private"] is True


def test_pin_and_pkcs11_codes_stay_out_of_argv_log_and_replies(
    deployment: Deployment, activity: list[str]
) -> None:
    pin = (deployment.state / "secrets" / "user.pin").read_text().strip()
    assert len(pin) >= 8
    log = deployment.log_text()
    assert "rpc.ok" in log and "rpc.refused" in log  # the log saw both kinds of call
    assert pin not in log
    assert "CKR" not in log
    assert deployment.server.proc is not None
    argv = Path(f"/proc/{deployment.server.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "serve" in argv and pin not in argv
    for message in activity:
        assert "CKR" not in message and pin not in message and "Traceback" not in message


def test_bootstrap_run_twice_changes_nothing_and_says_so(deployment: Deployment) -> None:
    from harness import run_init

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(deployment.state)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in deployment.state.rglob("*")
            if p.is_file()
            and p.suffix not in (".log", ".db", ".db-wal", ".db-shm", ".writelock")
            and "keystore" not in p.parts  # the keystore export is rewritten with identical content
            and "tokens" not in p.parts  # SoftHSM rewrites its own bookkeeping files at every login
        }

    before = snapshot()
    output = run_init(deployment.state)
    assert "already initialised; nothing changed" in output
    assert snapshot() == before
