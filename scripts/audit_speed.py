"""Measure offline audit verification speed (entries per second) on a synthetic log.

    .venv/bin/python scripts/audit_speed.py --entries 300000 [--database-url URL] [--repeat 5]

Without --database-url a fresh SQLite file in a temporary folder is used; with a PostgreSQL URL
(postgresql+psycopg://...) a throwaway schema is made there and dropped afterwards. The log is filled
with the hand-out mix (command.recorded, command.issued, outcome.reported) through the server's own
appender, so the entries hash exactly as the service's do. Prints the best of the runs (the machine is
shared) and the peak resident memory before and after verifying (flat when the log is streamed)."""

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
from pathlib import Path

from sqlalchemy import Engine, text

from vdno.server.domain.audit import read_export, verify_source
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import AuditAppender, export_log, verify_log
from vdno.server.store.sql import make_engine, migrate

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


def _best(label: str, entries: int, runs: int, measure: Callable[[], object]) -> None:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        measure()
        times.append(time.perf_counter() - started)
    rates = ", ".join(f"{entries / t:,.0f}" for t in times)
    print(f"{label}: best {entries / min(times):,.0f} entries/s (runs: {rates})")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as folder:
        engine = make_engine(url)
        migrate(engine)
        started = time.perf_counter()
        fill(engine, args.entries)
        seconds = time.perf_counter() - started
        print(f"{engine.dialect.name}: filled {args.entries} entries in {seconds:.1f} s")
        peak_before = _peak_mib()

        def verify() -> None:
            report = verify_log(engine)
            assert report.ok and report.entries == args.entries, report.problems

        _best("verify the database", args.entries, args.repeat, verify)
        print(f"peak resident memory: {peak_before} MiB after filling, {_peak_mib()} MiB after verifying")
        export = Path(folder) / "audit.jsonl"
        with export.open("w") as out:
            export_log(engine, out)

        def verify_export() -> None:
            with export.open() as lines:
                report = verify_source(read_export(lines))
            assert report.ok and report.entries == args.entries, report.problems

        _best("verify an export", args.entries, args.repeat, verify_export)
        engine.dispose()
    return 0


def _peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


if __name__ == "__main__":
    sys.exit(main())
