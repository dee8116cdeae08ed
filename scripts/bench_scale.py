"""`make bench-scale`: the service on large stores against empty ones, on SQLite and PostgreSQL, in one run.

For each database (a SQLite file, a schema of the PostgreSQL at --postgres-url) two stores are made from one
initialised state folder: an empty one and a loaded one, to which --issuances reported issuances,
--meters meters (each with a custody row and a history entry) and --audit-entries audit entries (a
continuation of the chain, hashed as the service hashes) are bulk-loaded (executemany on SQLite, COPY on
PostgreSQL; no RPCs). Then, for each database:
  1. hand-out: a `vdno-server serve` on each store, taking turns in short windows (--rounds) from 1 and from
     8 concurrent benches, as `make bench` drives it (scripts/bench.py): rate and p99, loaded / empty;
  2. verify-audit: the offline verification of each store's whole log in a process of its own: entries/s
     and that process's peak resident memory;
  3. fleet queries on the loaded store (meters per state, generation and area; one meter's history): best
     time of --repeat, and the plans the database chooses for them.
Figures go to --out (JSON) and are printed. The defaults are the sizes of issue 15 (10 million issuances,
1 million meters, 10 million audit entries); smaller runs say so in the JSON ("sizes").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, select, text  # noqa: E402

CHUNK = 50_000  # rows per executemany / COPY batch
BENCHES = tuple(f"bench-{i:02d}" for i in range(1, 9))
ISSUANCE_COLUMNS = (
    "issuance_id",
    "bench_id",
    "request_id",
    "request_fingerprint",
    "device_id",
    "area_id",
    "generation",
    "counter",
    "device_certificate",
    "status",
    "created_at",
    "signed_at",
    "signed_command",
    "outcome_response",
    "outcome_at",
)
LOADED_PREFIX = b"\xfe\xed"  # device ids of loaded meters: apart from the simulator's fresh ones


def _details(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _timestamp(engine: Engine) -> Any:
    from sqlalchemy import DateTime

    process = DateTime(timezone=True).bind_processor(engine.dialect)
    return process if process is not None else (lambda v: v)


def _rows_in(engine: Engine, table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> None:
    """Insert rows fast: COPY on PostgreSQL, executemany in one transaction per CHUNK on SQLite."""
    raw: Any = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cur.execute("PRAGMA synchronous=OFF")
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
            batch: list[tuple[Any, ...]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= CHUNK:
                    cur.execute("BEGIN")
                    cur.executemany(sql, batch)
                    cur.execute("COMMIT")
                    batch = []
            if batch:
                cur.execute("BEGIN")
                cur.executemany(sql, batch)
                cur.execute("COMMIT")
        raw.commit()
        cur.close()
    finally:
        raw.close()


def bulk_load(engine: Engine, issuances: int, meters: int, audit_entries: int, signed: int = 0) -> None:
    """Append to a migrated store with a generation: `issuances` reported (applied) issuances of meters
    that the records then show in an area (the first `signed` of them signed, unreported), `meters`
    meters in custody with one history entry each (issuance i is meter i % meters), and `audit_entries`
    entries continuing the audit chain. Counters are below the clock-derived floor of new ones."""
    from vdno.server.domain.audit import entry_body

    with engine.begin() as c:
        generation = c.execute(text("SELECT min(generation) FROM generations")).scalar_one()
        first_id = (
            int(c.execute(text("SELECT coalesce(max(issuance_id), 0) FROM issuances")).scalar_one()) + 1
        )
        head_seq, head_hash = c.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    ts = _timestamp(engine)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    certificate = bytes(range(256)) * 2  # a device certificate's size
    command = b"\xdf" + bytes(200)
    response = b"\x90" + bytes(60)

    def device(i: int) -> bytes:
        return LOADED_PREFIX + (i % max(meters, 1)).to_bytes(6, "big")

    def issuance_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(issuances):
            at = ts(start + timedelta(seconds=i))
            status = "signed" if i < signed else "applied"
            yield (
                first_id + i, f"bench-{1 + i % 8:02d}", f"load-{i}", "fp", device(i), 10 + i % 14, generation,
                1 + i, certificate, status, at, at, command, response if status == "applied" else None,
                at if status == "applied" else None,
            )  # fmt: skip

    _rows_in(engine, "issuances", ISSUANCE_COLUMNS, issuance_rows())
    now = ts(start)
    states = ("area", "area", "area", "vanilla", "hand-in-ordered", "unknown")

    def device_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(meters):
            state = states[i % len(states)]
            area = None if state != "area" else 10 + i % 14
            gen = generation if state == "vanilla" else None
            yield device(i), now, state, area, gen, first_id + i if i < issuances else None

    columns = ("device_id", "updated_at", "custody_state", "area_id", "generation", "last_issuance_id")
    _rows_in(engine, "devices", columns, device_rows())

    def history_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(meters):
            yield (
                device(i),
                now,
                "hand-out-applied",
                "area",
                10 + i % 14,
                None,
                f"issuance:{first_id + i}",
                "bench",
            )

    columns = ("device_id", "at", "event", "state", "area_id", "generation", "reference", "actor")
    _rows_in(engine, "device_history", columns, history_rows())

    last = [int(head_seq), str(head_hash)]

    def audit_rows() -> Iterator[tuple[Any, ...]]:
        at = start.isoformat()
        seq, prev = last
        for n in range(audit_entries):
            seq += 1
            issuance = first_id + n // 3
            kind = n % 3
            if kind == 0:
                event, details = "command.recorded", _details(
                    {"device": device(n // 3).hex(), "area": 10 + n % 14, "generation": generation,
                     "target_generation": None, "counter": 1 + n // 3, "request_id": f"load-{n // 3}"}
                )  # fmt: skip
            elif kind == 1:
                event = "command.issued"
                details = _details({"counter": 1 + n // 3, "sha256": hashlib.sha256(command).hexdigest()})
            else:
                event = "outcome.reported"
                details = _details(
                    {"status": "applied", "cells": [[1, 0], [2, 0]], "evidence": "cs02b", "was": "signed",
                     "custody": "area"}
                )  # fmt: skip
            actor, subject = "bench:bench-01", f"issuance:{issuance}"
            body = entry_body(prev, seq, at, event, actor, subject, details)
            digest = hashlib.sha256(body).hexdigest()
            yield seq, at, event, actor, subject, details, prev, digest, body
            prev = digest
        last[:] = [seq, prev]

    columns = ("seq", "at", "event", "actor", "subject", "details", "prev_hash", "hash", "body")
    _rows_in(engine, "audit_log", columns, audit_rows())
    from vdno.server.store.fleet import DEVICE_COUNTS_REBUILD

    with engine.begin() as c:
        c.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": last[0], "h": last[1]}
        )
        c.execute(text("DELETE FROM device_counts"))
        c.execute(text(DEVICE_COUNTS_REBUILD))
        if engine.dialect.name == "postgresql":
            _reset_sequences(c)
    _analyse(engine)


def _reset_sequences(c: Any) -> None:
    """PostgreSQL: each serial column's sequence past the ids the load or the copy wrote."""
    from vdno.server.store.schema import metadata

    for table in metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True:
                c.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "  # noqa: S608
                        f"coalesce((SELECT max({column.name}) FROM {table.name}), 0) + 1, false)"
                    )
                )


def _analyse(engine: Engine) -> None:
    """Statistics and (PostgreSQL) the visibility map, as a database that has been running a while has."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            c = c.execution_options(isolation_level="AUTOCOMMIT")
            c.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as c:
            c.exec_driver_sql("ANALYZE")


def copy_store(source: Engine, target: Engine) -> None:
    """Every table of a migrated store into another migrated (empty) one, rows as stored."""
    from vdno.server.store.schema import audit_head, metadata

    with target.begin() as c:
        c.execute(audit_head.delete())
    for table in metadata.sorted_tables:
        with source.connect() as s:
            rows = [tuple(r) for r in s.execute(select(table))]
        if rows:
            columns = tuple(col.name for col in table.columns)
            _rows_in(target, table.name, columns, iter(rows))
    if target.dialect.name == "postgresql":
        with target.begin() as c:
            _reset_sequences(c)


# -- fleet queries


def explain(engine: Engine, statement: Any) -> str:
    """The plan the database chooses for a statement, with its parameters, as the store runs it."""
    compiled = statement.compile(dialect=engine.dialect)
    named = compiled.construct_params()
    params: Any = [named[n] for n in compiled.positiontup] if compiled.positiontup else named
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as c:
        rows = c.exec_driver_sql(
            prefix + str(compiled), tuple(params) if compiled.positiontup else params
        ).all()
    return "\n".join(str(r[-1]) for r in rows)


def fleet_statements(device_id: bytes) -> dict[str, Any]:
    """The fleet queries as the store runs them (server/store/fleet.py)."""
    from vdno.server.store.fleet import FLEET_COUNTS, FLEET_SIGNED
    from vdno.server.store.schema import device_history, devices

    return {
        "meters_per_state": FLEET_COUNTS,
        "signed_unreported": FLEET_SIGNED,
        "meter_custody": select(devices).where(devices.c.device_id == device_id),
        "meter_history": select(device_history)
        .where(device_history.c.device_id == device_id)
        .order_by(device_history.c.entry_id),
    }


def fleet_times(url: str, device_id: bytes, repeat: int) -> dict[str, Any]:
    """Best time of the store's fleet_summary and history calls, and each statement's plan."""
    from vdno.server.store.sql import open_store

    store = open_store(url, run_migrations=False)
    try:
        out: dict[str, Any] = {}
        for name, call in (
            ("summary_ms", store.fleet_summary),
            ("history_ms", lambda: (store.device_custody(device_id), store.device_history(device_id))),
        ):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            out[name] = round(min(times) * 1000, 2)
        out["plans"] = {k: explain(store.engine, s) for k, s in fleet_statements(device_id).items()}
        return out
    finally:
        store.close()


# -- verify-audit in a process of its own (its peak resident memory is the verification's)


def verify_in_child(url: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--verify", url], capture_output=True, text=True, check=True, env=_env()
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _verify(url: str) -> None:
    from vdno.server.store.audit import verify_log
    from vdno.server.store.engine import make_engine

    engine = make_engine(url)
    baseline = _peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    report = verify_log(engine)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_rss_mib()
    print(
        json.dumps(
            {
                "ok": report.ok,
                "entries": report.entries,
                "entries_per_s": round(report.entries / seconds),
                "entries_per_cpu_s": round(report.entries / cpu),
                "peak_rss_mib": peak,
                "rss_before_mib": baseline,
            }
        )
    )


def _peak_rss_mib() -> int:
    """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss, it is not carried over from
    the parent that started this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


# -- stores


@contextlib.contextmanager
def postgres_schemas(url: str, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    from vdno.server.store.engine import make_engine

    tag = uuid.uuid4().hex[:8]
    admin = make_engine(url)
    schemas = {name: f"scale_{name}_{tag}" for name in names}
    with admin.begin() as c:
        for schema in schemas.values():
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield {
            name: f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{s}"
            for name, s in schemas.items()
        }
    finally:
        with admin.begin() as c:
            for schema in schemas.values():
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_stores(
    state: Path,
    pg_url: str | None,
    sizes: dict[str, int],
    databases: tuple[str, ...] = ("sqlite", "postgresql"),
) -> Iterator[tuple[str, dict[str, str]]]:
    """(database, {"empty": url, "loaded": url}) for SQLite, then PostgreSQL: copies of the state folder's
    initialised store, the loaded one bulk-loaded."""
    from vdno.server.store.engine import make_engine, migrate

    source = make_engine(f"sqlite:///{state / 'vdno.db'}")
    migrate(source)  # a state folder made by an older vdno-server
    try:
        folder = state / "scale"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        urls = {kind: f"sqlite:///{folder / f'{kind}.db'}" for kind in ("empty", "loaded")}
        stores: list[tuple[str, dict[str, str]]] = [("sqlite", urls)] if "sqlite" in databases else []
        with contextlib.ExitStack() as stack:
            if pg_url and "postgresql" in databases:
                stores.append(
                    ("postgresql", stack.enter_context(postgres_schemas(pg_url, ("empty", "loaded"))))
                )
            for database, pair in stores:
                for kind, url in pair.items():
                    if database == "sqlite":  # the initialised file itself, page for page
                        with (
                            sqlite3.connect(state / "vdno.db") as src,
                            sqlite3.connect(folder / f"{kind}.db") as dst,
                        ):
                            src.backup(dst)
                    engine = make_engine(url)
                    try:
                        migrate(engine)
                        if database != "sqlite":
                            copy_store(source, engine)
                        if kind == "loaded":
                            t0 = time.perf_counter()
                            bulk_load(engine, sizes["issuances"], sizes["meters"], sizes["audit_entries"])
                            print(
                                f"{database}: loaded {sizes} in {time.perf_counter() - t0:,.0f} s", flush=True
                            )
                        else:
                            _analyse(engine)
                    finally:
                        engine.dispose()
                yield database, pair
    finally:
        source.dispose()


# -- hand-out: a server on each store, taking turns


def start_server(state: Path, url: str, processes: int) -> tuple[int, subprocess.Popen[bytes]]:
    from scripts.lab_service import free_port, open_private_log, wait_until_serving

    port = free_port()
    env = _env() | {
        "VDNO_LISTEN": f"127.0.0.1:{port}",
        "VDNO_PROCESSES": str(processes),
        "VDNO_DATABASE_URL": url,
    }
    log = open_private_log(state / f"scale-server-{port}.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vdno.server.main", "serve", "--config", str(state / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )
    wait_until_serving(state, port, server.poll, timeout=120)
    return port, server


def hand_out_ratios(
    state: Path, urls: dict[str, str], readings: Any, seconds: float, rounds: int, processes: int
) -> list[dict[str, Any]]:
    from scripts.bench import hand_out_call, run_load, stop, summarise

    servers: list[subprocess.Popen[bytes]] = []
    try:
        ports = {}
        for kind, url in urls.items():
            ports[kind], server = start_server(state, url, processes)
            servers.append(server)
        time.sleep(1.0)
        results = []
        for n in (1, 8):
            pairs = [
                (
                    run_load(ports["empty"], state, n, seconds / rounds, lambda i: hand_out_call(readings)),
                    run_load(ports["loaded"], state, n, seconds / rounds, lambda i: hand_out_call(readings)),
                )
                for _ in range(rounds)
            ]
            empty = summarise(n, [e for e, _ in pairs])
            loaded = summarise(n, [x for _, x in pairs])
            results.append(
                {
                    "benches": n,
                    "empty": _pick(empty),
                    "loaded": _pick(loaded),
                    "rate_ratio": round(statistics.median(x.rate / e.rate for e, x in pairs if e.rate), 3),
                    "p99_ratio": round(loaded["p99_ms"] / empty["p99_ms"], 3) if empty["p99_ms"] else None,
                }
            )
        return results
    finally:
        stop(servers)


def _pick(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("signed_per_s", "p50_ms", "p99_ms", "signed", "errors", "first_error", "cpu_steal_percent")
    return {k: summary[k] for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", type=Path, default=ROOT / "state-bench-scale")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-scale-results.json")
    parser.add_argument("--issuances", type=int, default=10_000_000)
    parser.add_argument("--meters", type=int, default=1_000_000)
    parser.add_argument("--audit-entries", type=int, default=10_000_000)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("VDNO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
        help='PostgreSQL to measure on ("" for SQLite alone); throwaway schemas are made and dropped',
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="hand-out load per bench count and store")
    parser.add_argument("--rounds", type=int, default=4, help="empty / loaded turns per bench count")
    parser.add_argument("--processes", type=int, default=2, help="server processes per store")
    parser.add_argument("--repeat", type=int, default=5, help="fleet query runs (best is kept)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="which to measure, comma-separated")
    parser.add_argument("--meter-pool", type=int, default=0, help="fresh meters read for the hand-outs")
    parser.add_argument("--skip-hand-out", action="store_true", help="stores, verify-audit and fleet only")
    parser.add_argument("--verify", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verify:
        _verify(args.verify)
        return 0
    pg_url = (
        args.postgres_url.replace("postgresql://", "postgresql+psycopg://", 1) if args.postgres_url else None
    )
    state = args.state.resolve()
    sizes = {"issuances": args.issuances, "meters": args.meters, "audit_entries": args.audit_entries}
    if not (state / "config.toml").exists():
        subprocess.run(
            [sys.executable, "-m", "vdno.labdcc", "init", "--state", str(state)],
            check=True, stdout=subprocess.DEVNULL, env=_env(),
        )  # fmt: skip
        init = [sys.executable, "-m", "vdno.server.main", "init", "--state", str(state)]
        for bench in BENCHES:
            init += ["--bench", bench]
        subprocess.run(init, check=True, stdout=subprocess.DEVNULL, env=_env())
    databases = tuple(args.databases.split(","))
    readings = None
    if not args.skip_hand_out:
        from scripts.bench import Readings

        # Every call is for a fresh meter: enough for 600/s with 1 bench and 1,400/s with 8, on 2 stores of
        # each database (a quiet 2-core machine used 28,637 at --seconds 6 on both: docs/benchmarks.md; the
        # first error names a pool that ran dry: raise --meter-pool).
        meters = args.meter_pool or int(args.seconds * (600 + 1_400) * 2 * len(databases))
        readings = Readings(state, meters)
        print(f"read {meters:,} fresh meters", flush=True)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "sizes": sizes,
        "defaults": {"issuances": 10_000_000, "meters": 1_000_000, "audit_entries": 10_000_000},
        "server_processes": args.processes,
        "databases": {},
    }
    ok = True
    for database, urls in make_stores(state, pg_url, sizes, databases):
        result: dict[str, Any] = {}
        if readings is not None:
            result["hand_out"] = hand_out_ratios(
                state, urls, readings, args.seconds, args.rounds, args.processes
            )
            for r in result["hand_out"]:
                ok &= r["empty"]["errors"] == 0 and r["loaded"]["errors"] == 0
                print(
                    f"{database}, {r['benches']} bench(es): empty {r['empty']['signed_per_s']:,.0f}/s p99 "
                    f"{r['empty']['p99_ms']} ms; loaded {r['loaded']['signed_per_s']:,.0f}/s p99 "
                    f"{r['loaded']['p99_ms']} ms; rate ratio {r['rate_ratio']}, p99 ratio {r['p99_ratio']}",
                    flush=True,
                )
        result["verify_audit"] = {kind: verify_in_child(url) for kind, url in urls.items()}
        ok &= all(v["ok"] for v in result["verify_audit"].values())
        print(f"{database} verify-audit: {json.dumps(result['verify_audit'])}", flush=True)
        probe = LOADED_PREFIX + (args.meters // 2).to_bytes(6, "big")
        result["fleet"] = fleet_times(urls["loaded"], probe, args.repeat)
        print(
            f"{database} fleet: summary {result['fleet']['summary_ms']} ms, "
            f"history {result['fleet']['history_ms']} ms",
            flush=True,
        )
        for name, plan in result["fleet"]["plans"].items():
            print(f"  {name}: {plan.replace(chr(10), ' | ')}")
        report["databases"][database] = result
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
