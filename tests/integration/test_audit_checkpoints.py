"""Signed checkpoints of the audit log, end to end: the audit key made in the token by `vdno-server init`,
`vdno-admin audit checkpoint` against the real server, the document checked with `cryptography` alone,
the officer named in the log, benches refused; forged checkpoints named; verify and export with the server
stopped; a configuration without [audit] refused clearly, and `init` completing it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from audit_testlib import (
    admin,
    admin_process,
    connection,
    forged_checkpoint,
    hash_at,
    officer_args,
    take_checkpoint,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from harness import run_init
from integration_testlib import Deployment, read_key_attributes, rpc_error

from vdno.server.domain.audit import ChainHead
from vdno.server.domain.checkpoint import AuditCheckpoint
from vdno.v1 import audit_pb2, audit_pb2_grpc

AUDIT_TABLE = "\n[audit]\n"


@pytest.fixture(scope="module")
def first(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by `vdno-admin audit checkpoint`."""
    path = tmp_path_factory.mktemp("checkpoint") / "first.json"
    take_checkpoint(deployment, path)
    return path


def public_key(deployment: Deployment) -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key((deployment.state / "pki" / "audit-checkpoint-key.pem").read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_a_checkpoint_signs_the_chain_head_and_verifies_with_cryptography_alone(
    deployment: Deployment, first: Path
) -> None:
    text = first.read_text()
    document: dict[str, Any] = json.loads(text)
    assert document["format"] == "vdno-audit-checkpoint/1"
    assert document["signature_algorithm"] == "ECDSA-P256-SHA256"
    # The documented canonical payload, built here without vdno's code, verifies with the exported key.
    signed = {k: document[k] for k in ("at", "format", "head_hash", "seq")}
    payload = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    raw = bytes.fromhex(document["signature"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = public_key(deployment)
    key.verify(der, payload, ec.ECDSA(hashes.SHA256()))
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert document["key_id"] == hashlib.sha256(spki).hexdigest()
    with connection(deployment.database_url) as conn:  # the head it signed is the log's entry
        assert hash_at(conn, document["seq"]) == document["head_hash"]
    # The document round-trips.
    parsed = AuditCheckpoint.from_document(text)
    assert parsed.to_document() == text
    assert parsed.head == ChainHead(document["seq"], document["head_hash"])


def test_the_checkpoint_and_the_audit_key_are_audited(deployment: Deployment, first: Path) -> None:
    document = json.loads(first.read_text())
    [made] = [e for e in deployment.audit_events("audit.checkpoint") if e.seq == document["seq"] + 1]
    assert made.actor == "officer:officer-01" and made.subject == "audit-log"
    assert json.loads(made.details) == {
        "seq": document["seq"],
        "hash": document["head_hash"],
        "at": document["at"],
        "key_id": document["key_id"],
    }
    [generated] = deployment.audit_events("audit.key-generated")
    assert generated.actor == "bootstrap"
    assert json.loads(generated.details)["key_id"] == document["key_id"]


def test_the_audit_private_key_is_sensitive_and_never_extractable(
    deployment: Deployment, softhsm_module: Path
) -> None:
    attributes = read_key_attributes(deployment.state, softhsm_module, ["vdno-audit"])["vdno-audit"]
    assert attributes["sensitive"] and attributes["always_sensitive"] and attributes["token"]
    assert not attributes["extractable"] and attributes["never_extractable"]


def test_a_bench_may_not_create_checkpoints(deployment: Deployment) -> None:
    refused_before = len(deployment.audit_events("auth.refused"))
    channel, _ = deployment.stub("bench-01")
    with channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[no-untyped-call]
        error = rpc_error(lambda: stub.CreateCheckpoint(audit_pb2.CreateCheckpointRequest(), timeout=30))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "vdno-bench certificate may not call /vdno.v1.AuditService/CreateCheckpoint" in (
        error.details() or ""
    )
    refusals = deployment.audit_events("auth.refused")
    assert len(refusals) == refused_before + 1 and refusals[-1].actor == "bench:bench-01"
    assert not [e for e in deployment.audit_events("audit.checkpoint") if e.actor.startswith("bench:")]


def test_forged_checkpoints_are_named(deployment: Deployment, first: Path, tmp_path: Path) -> None:
    genuine = json.loads(first.read_text())
    head = ChainHead(genuine["seq"], genuine["head_hash"])
    with connection(deployment.database_url) as conn:
        later = ChainHead(head.seq + 1, hash_at(conn, head.seq + 1))
    altered = dict(genuine, seq=later.seq, head_hash=later.hash)  # a real head, the signature of another
    other_key, other_id = forged_checkpoint(head, genuine["at"])
    copied_id, _ = forged_checkpoint(head, genuine["at"], key_id=genuine["key_id"])
    files = {"altered": json.dumps(altered), "other-key": other_key, "copied-key-id": copied_id, "junk": "{}"}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(content)
    against = [arg for name in files for arg in ("--against", str(tmp_path / f"{name}.json"))]
    config = str(deployment.state / "config.toml")
    run = admin(["audit", "verify", "--server-config", config, "--against", str(first), *against, "--json"])
    assert run.code == 1, run.stdout
    report = run.json()
    kinds = {Path(p["checkpoint"]).stem: p["kind"] for p in report["problems"]}
    assert kinds == {
        "altered": "checkpoint-bad-signature",
        "other-key": "checkpoint-wrong-key",
        "copied-key-id": "checkpoint-bad-signature",
        "junk": "checkpoint-malformed",
    }
    assert other_id[:16] in next(
        p["message"] for p in report["problems"] if p["kind"] == "checkpoint-wrong-key"
    )
    statuses = {Path(c["checkpoint"]).stem: c["status"] for c in report["checkpoints"]}
    assert statuses == {"first": "reached", **{name: "failed" for name in files}}
    assert report["entries"] == report["head"]["seq"]  # the log itself is intact


def test_verify_and_export_work_with_the_server_stopped(
    deployment: Deployment, first: Path, tmp_path: Path
) -> None:
    """Leaves the server stopped: the next test starts it with the configuration it needs."""
    config = str(deployment.state / "config.toml")
    deployment.server.stop()
    verified = admin_process(
        ["audit", "verify", "--server-config", config, "--against", str(first)], deployment.database_url
    )
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "audit log intact" in verified.stdout and "reached" in verified.stdout
    exported = tmp_path / "audit.jsonl"
    done = admin(
        ["audit", "export", "--server-config", config, "--out", str(exported)], deployment.database_url
    )
    assert done.code == 0, done.stderr
    key = str(deployment.state / "pki" / "audit-checkpoint-key.pem")
    from_export = admin(
        ["audit", "verify", "--export", str(exported), "--against", str(first), "--audit-key", key]
    )
    assert from_export.code == 0, from_export.stdout


def test_without_an_audit_table_checkpoints_are_refused_clearly_and_init_completes_the_config(
    deployment: Deployment, first: Path, tmp_path: Path
) -> None:
    config = deployment.state / "config.toml"
    original = config.read_text()
    assert AUDIT_TABLE in original
    public = deployment.state / "pki" / "audit-checkpoint-key.pem"
    exported_key = public.read_bytes()
    deployment.server.stop()  # (a no-op after the test above)
    config.write_text(
        original[: original.index(AUDIT_TABLE)] + "\n"
    )  # a state folder made before checkpoints
    public.unlink()
    deployment.server.start()

    refused = admin([*officer_args(deployment), "audit", "checkpoint", "--out", str(tmp_path / "no.json")])
    assert refused.code == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "no [audit] table" in refused.stderr
    assert not (tmp_path / "no.json").exists()
    plain = admin(["audit", "verify", "--server-config", str(config)], deployment.database_url)
    assert plain.code == 0  # the chain check needs no key
    keyless = admin(["audit", "verify", "--server-config", str(config), "--against", str(first)])
    assert keyless.code == 2 and "--audit-key" in keyless.stderr

    output = run_init(deployment.state)
    assert "added the [audit] table to config.toml" in output
    assert "exported the audit checkpoint public key" in output and "generated key" not in output
    assert config.read_text().count(AUDIT_TABLE) == 1 and public.read_bytes() == exported_key
    deployment.restart()
    second = tmp_path / "second.json"
    take_checkpoint(deployment, second)
    assert json.loads(second.read_text())["key_id"] == json.loads(first.read_text())["key_id"]
