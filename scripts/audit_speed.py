"""Measure offline audit verification speed (entries per second) on a synthetic log.

    .venv/bin/python scripts/audit_speed.py --entries 1000000 [--database-url URL] [--repeat 3] [--workers N]

Without --database-url a fresh SQLite file in a temporary folder is used; with a PostgreSQL URL
(postgresql+psycopg://...) a throwaway schema is made there and dropped afterwards. The log is filled
with the hand-out mix (command.recorded, command.issued, outcome.reported) through the server's own
appender, so the entries hash exactly as the service's do. Measured in the same run, best of --repeat
(the machine is shared): the baseline, the walk before the record column (8 columns read, each entry's
JSON re-encoded: a copy of that code, `old_walk`), then verify_log in one pass and with --workers
processes over seq ranges. Each prints entries/s of wall time and of CPU time (this process and its
workers; not the database server's), and the ratio to the baseline; then the peak resident memory of
this process and of the largest worker (flat when the log is streamed), and an export's verification.
--backfill also times migration 0007 (filling each entry's body from its columns) on the log."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from vdno.server.domain.audit import GENESIS_HASH, entry_hash, read_export, verify_source
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import (
    PARALLEL_FROM,
    AuditAppender,
    audit_snapshot,
    default_workers,
    export_log,
    verify_log,
)
from vdno.server.store.engine import make_engine, migrate

CHUNK = 5000


def _events(first: int, count: int) -> list[AuditEvent]:
    events = []
    for n in range(first, first + count):
        issuance = n // 3 + 1
        kind = n % 3
        if kind == 0:
            details = {
                "device": f"{n:016x}",
                "area": 10 + n % 14,
                "generation": 1,
                "counter": 1_700_000_000_000_000 + n,
                "request_id": f"rq-{uuid.UUID(int=n).hex}",
            }
            events.append(AuditEvent("command.recorded", "bench:bench-01", f"issuance:{issuance}", details))
        elif kind == 1:
            digest = hashlib.sha256(n.to_bytes(8, "big")).hexdigest()
            details = {"counter": 1_700_000_000_000_000 + n, "sha256": digest}
            events.append(AuditEvent("command.issued", "bench:bench-01", f"issuance:{issuance}", details))
        else:
            details = {"status": "applied", "cells": [[1, 0], [2, 0]]}
            events.append(AuditEvent("outcome.reported", "bench:bench-01", f"issuance:{issuance}", details))
    return events


def fill(engine: Engine, entries: int) -> None:
    appender = AuditAppender(engine.dialect)
    for first in range(0, entries, CHUNK):
        with engine.begin() as conn:
            appender.append(conn, _events(first, min(CHUNK, entries - first)))


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url is None:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'audit.db'}"
        return
    schema = f"speed_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


OLD_ENTRIES = "SELECT seq, at, event, actor, subject, details, prev_hash, hash FROM audit_log ORDER BY seq"


def old_walk(engine: Engine) -> int:
    """The verification before the record column (server/domain/audit.py _walk at bdcabe0), as a baseline:
    8 columns read through the same cursor, each entry's JSON re-encoded and hashed. The entries verified."""
    with audit_snapshot(engine) as snapshot:
        dbapi: Any = snapshot._conn.connection.dbapi_connection
        if engine.dialect.name == "postgresql":
            cursor = dbapi.cursor(name="vdno_audit_walk", binary=True)
            cursor.itersize = 2000
        else:
            cursor = dbapi.cursor()
        cursor.execute(OLD_ENTRIES)
        prev, expected, hash_of = GENESIS_HASH, 0, entry_hash
        while page := cursor.fetchmany(2000):
            for seq, at, event, actor, subject, details, prev_hash, digest in page:
                expected += 1
                if seq != expected or prev_hash != prev:
                    raise AssertionError(f"entry {seq}: out of order or not linked")
                if hash_of(prev, seq, at, event, actor, subject, details) != digest:
                    raise AssertionError(f"entry {seq}: hash mismatch")
                prev = digest
        cursor.close()
        return expected


@dataclass(frozen=True)
class Rate:
    wall: float  # entries/s
    cpu: float  # entries/s of CPU time, this process and its workers


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _best(
    label: str, entries: int, runs: int, measure: Callable[[], object], baseline: Rate | None = None
) -> Rate:
    results = []
    for _ in range(runs):
        cpu, started = _cpu_seconds(), time.perf_counter()
        measure()
        results.append((time.perf_counter() - started, _cpu_seconds() - cpu))
    wall, cpu = min(results)
    rate = Rate(entries / wall, entries / cpu)
    runs_text = ", ".join(f"{entries / w:,.0f}" for w, _ in results)
    ratio = (
        ""
        if baseline is None
        else f"; x{rate.wall / baseline.wall:.2f} wall, x{rate.cpu / baseline.cpu:.2f} CPU"
    )
    print(f"{label}: best {rate.wall:,.0f} entries/s wall, {rate.cpu:,.0f}/s CPU (runs: {runs_text}){ratio}")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--backfill", action="store_true", help="also time migration 0007 on the log")
    args = parser.parse_args()
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as folder:
        engine = make_engine(url)
        migrate(engine)
        started = time.perf_counter()
        fill(engine, args.entries)
        seconds = time.perf_counter() - started
        print(f"{engine.dialect.name}: filled {args.entries} entries in {seconds:.1f} s")
        peak_before = _peak_mib()

        def baseline_walk() -> None:
            assert old_walk(engine) == args.entries

        def verify(workers: int) -> Callable[[], None]:
            def run() -> None:
                report = verify_log(engine, workers=workers)
                assert report.ok and report.entries == args.entries, report.problems

            return run

        baseline = _best(
            "baseline: the walk before the record column, one pass", args.entries, args.repeat, baseline_walk
        )
        _best("verify_log, one pass", args.entries, args.repeat, verify(1), baseline)
        ranges = (
            "" if args.entries >= PARALLEL_FROM else f" (one pass: ranges from {PARALLEL_FROM:,} entries)"
        )
        _best(
            f"verify_log, {args.workers} workers{ranges}",
            args.entries,
            args.repeat,
            verify(args.workers),
            baseline,
        )
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        print(
            f"peak resident memory: {peak_before} MiB after filling, {_peak_mib()} MiB after verifying; "
            f"the largest worker {children} MiB"
        )
        export = Path(folder) / "audit.jsonl"
        with export.open("w") as out:
            export_log(engine, out)

        def verify_export() -> None:
            with export.open() as lines:
                report = verify_source(read_export(lines))
            assert report.ok and report.entries == args.entries, report.problems

        _best("verify an export", args.entries, args.repeat, verify_export)
        if args.backfill:
            backfill(engine, args.entries)
        engine.dispose()
    return 0


def backfill(engine: Engine, entries: int) -> None:
    """Time migration 0007 filling every entry's body: the column dropped and the database put back at
    revision 0006 first (a log written before 0007), verified after."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log DROP COLUMN body"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
    cpu, started = _cpu_seconds(), time.perf_counter()
    migrate(engine)
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    report = verify_log(engine, workers=1)
    assert report.ok and report.entries == entries, report.problems
    print(f"migration 0007 (body filled from the columns): {wall:.1f} s wall, {cpu:.1f} s CPU here")


def _peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


if __name__ == "__main__":
    sys.exit(main())
