"""Audit log damage, each kind found and named by `vdno-admin audit verify`, on SQLite
and PostgreSQL: checkpoints are made by the real server with the audit key in SoftHSM; each case damages
a copy of the log with direct SQL, and the export of the damaged copy is verified with the same result.
Deleting the newest entries with the head moved to match, and an edit with the chain re-hashed after it,
pass the plain chain check and are found against a checkpoint taken before."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_testlib import (
    admin,
    body_at,
    connection,
    edit_record,
    hash_at,
    log_copy,
    move_head_to,
    rehash_from,
    take_checkpoint,
)
from integration_testlib import Deployment
from sqlalchemy import Connection, text


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class Checkpoints:
    first: Path  # covers entry first_seq
    first_seq: int
    second: Path  # covers entry second_seq, taken after first (its audit event lies between)
    second_seq: int


@pytest.fixture(scope="module")
def checkpoints(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    folder = tmp_path_factory.mktemp("checkpoints")
    first = take_checkpoint(deployment, folder / "first.json")
    second = take_checkpoint(deployment, folder / "second.json")
    assert second["seq"] == first["seq"] + 1  # the first checkpoint's audit event
    return Checkpoints(folder / "first.json", first["seq"], folder / "second.json", second["seq"])


def edit_entry_5(conn: Connection, _: Checkpoints) -> None:
    actor = conn.execute(text("SELECT actor FROM audit_log WHERE seq = 5")).scalar_one()
    edit_record(conn, 5, f',"{actor}",'.encode(), b',"officer:mallory",')


def delete_entry_7(conn: Connection, _: Checkpoints) -> None:
    conn.execute(text("DELETE FROM audit_log WHERE seq = 7"))


def relink_entry_6(conn: Connection, _: Checkpoints) -> None:
    edit_record(conn, 6, hash_at(conn, 5).encode(), hash_at(conn, 3).encode())


def swap_entries_4_and_5(conn: Connection, _: Checkpoints) -> None:
    for old, new in ((4, -4), (5, 4), (-4, 5)):
        conn.execute(text("UPDATE audit_log SET seq = :n WHERE seq = :o"), {"n": new, "o": old})


def delete_head(conn: Connection, _: Checkpoints) -> None:
    conn.execute(text("DELETE FROM audit_head"))


def truncate_tail(conn: Connection, checkpoints: Checkpoints) -> None:
    """The second checkpoint's entry and every later one deleted, the head moved to the new last entry."""
    conn.execute(text("DELETE FROM audit_log WHERE seq >= :s"), {"s": checkpoints.second_seq})
    move_head_to(conn, checkpoints.second_seq - 1)


def edit_entry_3_and_rehash(conn: Connection, _: Checkpoints) -> None:
    body = body_at(conn, 3)
    edit_record(conn, 3, body[body.rindex(b',"') :], b',"{\\"name\\":\\"Nowhere\\"}"]')
    rehash_from(conn, 3)


@dataclass(frozen=True)
class Case:
    damage: Callable[[Connection, Checkpoints], None]
    kind: str
    seq: Callable[[Checkpoints], int | None]  # the first bad entry the report names
    against: str | None = None  # damage only a checkpoint reveals: "first" or "second"


CASES = {
    "content-edited": Case(edit_entry_5, "hash-mismatch", lambda _: 5),
    "middle-deleted": Case(delete_entry_7, "sequence-gap", lambda _: 7),
    "link-broken": Case(relink_entry_6, "broken-link", lambda _: 6),
    "order-swapped": Case(swap_entries_4_and_5, "broken-link", lambda _: 4),
    "head-missing": Case(delete_head, "head-missing", lambda _: None),
    "tail-truncated": Case(truncate_tail, "log-truncated", lambda c: c.second_seq, "second"),
    "rewritten-and-rehashed": Case(edit_entry_3_and_rehash, "log-rewritten", lambda c: c.first_seq, "first"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_damage_is_found_and_the_first_bad_entry_named(
    deployment: Deployment, checkpoints: Checkpoints, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    config = str(deployment.state / "config.toml")
    with log_copy(deployment, tmp_path) as url:
        with connection(url) as conn:
            case.damage(conn, checkpoints)
        against: list[str] = []
        if case.against is not None:
            plain = admin(["audit", "verify", "--server-config", config], url)
            assert plain.code == 0, plain.stdout  # the chain alone cannot tell
            path = checkpoints.first if case.against == "first" else checkpoints.second
            against = ["--against", str(path)]
        found = admin(["audit", "verify", "--server-config", config, *against, "--json"], url)
        assert found.code == 1, found.stdout
        report = found.json()
        seq = case.seq(checkpoints)
        assert not report["ok"]
        assert [(p["kind"], p["seq"]) for p in report["problems"]] == [(case.kind, seq)]
        assert report["first_bad_seq"] == seq
        if seq is not None:
            assert report["problems"][0]["message"].startswith(f"entry {seq}: ")

        exported = tmp_path / "damaged.jsonl"
        assert admin(["audit", "export", "--server-config", config, "--out", str(exported)], url).code == 0
    again = admin(
        ["audit", "verify", "--export", str(exported), "--server-config", config, *against, "--json"]
    )
    assert again.code == 1
    assert again.json()["problems"] == report["problems"]


def test_the_intact_log_verifies_against_its_checkpoints_from_the_database_and_an_export(
    deployment: Deployment, checkpoints: Checkpoints, tmp_path: Path
) -> None:
    config = str(deployment.state / "config.toml")
    against = ["--against", str(checkpoints.first), "--against", str(checkpoints.second)]
    run = admin(["audit", "verify", "--server-config", config, *against, "--json"], deployment.database_url)
    assert run.code == 0, run.stdout
    report = run.json()
    for workers in ("0", "2"):  # a log this short is walked in one pass whatever the count
        again = admin(
            ["audit", "verify", "--server-config", config, *against, "--json", "--workers", workers],
            deployment.database_url,
        )
        assert (again.code, again.json()) == (0, report)
    assert report["ok"] and report["head"] == report["last"]
    assert [(c["seq"], c["status"]) for c in report["checkpoints"]] == [
        (checkpoints.first_seq, "reached"),
        (checkpoints.second_seq, "reached"),
    ]
    exported = tmp_path / "audit.jsonl"
    done = admin(
        ["audit", "export", "--server-config", config, "--out", str(exported)], deployment.database_url
    )
    assert done.code == 0 and f"exported {report['entries']} entries" in done.stdout
    again = admin(
        ["audit", "verify", "--export", str(exported), *against, "--server-config", config, "--json"]
    )
    assert again.code == 0
    assert {k: v for k, v in again.json().items() if k != "source"} == {
        k: v for k, v in report.items() if k != "source"
    }
    with connection(deployment.database_url) as conn:
        signed = json.loads(checkpoints.first.read_text())["head_hash"]
        assert hash_at(conn, checkpoints.first_seq) == signed


def test_an_edited_readable_column_changes_nothing_verify_or_export_shows(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The readable columns are a search index: verify and export read each entry's record (its body)."""
    config = str(deployment.state / "config.toml")
    with connection(deployment.database_url) as conn:
        actor = conn.execute(text("SELECT actor FROM audit_log WHERE seq = 5")).scalar_one()
    with log_copy(deployment, tmp_path) as url:
        with connection(url) as conn:
            conn.execute(text("UPDATE audit_log SET actor = 'officer:mallory' WHERE seq = 5"))
        run = admin(["audit", "verify", "--server-config", config, "--json"], url)
        assert run.code == 0 and run.json()["ok"], run.stdout
        exported = tmp_path / "edited-column.jsonl"
        assert admin(["audit", "export", "--server-config", config, "--out", str(exported)], url).code == 0
    entry_5 = json.loads(exported.read_text().splitlines()[5])
    assert entry_5["seq"] == 5 and entry_5["actor"] == actor != "officer:mallory"
