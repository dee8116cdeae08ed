"""`vdno-server`: serve, initialise the embedded default, verify the audit log."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

from vdno import exit_codes
from vdno.exit_codes import fail_command
from vdno.server.config import ConfigError, Settings, load_settings
from vdno.server.domain.errors import VdnoError
from vdno.tool_group import ToolGroup

# Exit codes (the shared table, vdno/exit_codes.py): 0 done; 1 verify-audit found the log broken; 2 a
# configuration, database or start-up problem (one line each on stderr, no traceback); 3 verify-audit could
# not read the database.
EXIT_USAGE = exit_codes.USAGE

app = typer.Typer(
    cls=ToolGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=(
        "vdno: the vanilla DNO custodian service. Exit codes: 0 done; 1 the audit log is broken "
        "(verify-audit); 2 configuration, database or start-up problem; 3 the database cannot be read."
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)

# With --json the command prints one JSON document on stdout whatever happens (an error object when it
# fails); its one-line messages still go to stderr.
_output = {"json": False}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"vdno-server {version('vdno')}")
        except PackageNotFoundError:
            typer.echo("vdno-server (not installed)")
        raise typer.Exit(exit_codes.OK)


@app.callback()
def main(
    _: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """vdno: the vanilla DNO custodian service."""


def _fail(message: str, code: int = EXIT_USAGE, problems: tuple[str, ...] = ()) -> NoReturn:
    fail_command("vdno-server", message, code, json_output=_output["json"], problems=problems)


def _fail_all(problems: tuple[str, ...], where: str = "") -> NoReturn:
    """One line for one problem; else a summary line naming `where`, then one line per problem. Exit 2."""
    if len(problems) == 1:
        _fail(f"{where}{problems[0]}", EXIT_USAGE)
    _fail(f"{where}{len(problems)} configuration problem(s)", EXIT_USAGE, problems)


def _settings(config: Path, check_files: bool = True) -> Settings:
    try:
        return load_settings(config, check_files=check_files)
    except ConfigError as exc:
        _fail_all(exc.problems, f"{config}: ")


def _empty_database_warning(settings: Settings) -> str | None:
    """The start-up warning for a database that lacks the reference data every call needs (one `init` never
    ran against, or a replica that started before it finished): calls are refused until it is there, so the
    server starts and says so (it serves as soon as `init` has run, without a restart)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from vdno.server.store.engine import make_engine
    from vdno.server.store.inventory import missing_reference_data

    engine = make_engine(settings.database_url)
    try:
        missing = missing_reference_data(engine)
    except SQLAlchemyError:  # the database went away since the migration: the health probe reports that
        return None
    finally:
        engine.dispose()
    if not missing:
        return None
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    what = ", ".join(f"no {kind}" for kind in missing[:-1]) + (" and " if len(missing) > 1 else "")
    if missing == ["area"]:  # `init` registers only the areas whose certificates it finds
        advice = (
            "register the area DNOs' certificates (`vdno-admin areas replace`, or `vdno-server init` with "
            "them in <state>/areas/); hand-outs and hand-ins are refused until then"
        )
    else:
        advice = f"run `vdno-server init --database-url {shown}`; calls that need them are refused until then"
    return f"database {shown} has {what}no {missing[-1]}: {advice}"


def _database_for_log(url: str) -> str:
    """The database URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


def _announce(what: str, port: int, json_lines: bool) -> None:
    """The line on stdout a caller waits for: `vdno-server listening on port N` (health, metrics), or with
    --json one JSON object per line, {"listening": "server" | "health" | "metrics", "port": N}."""
    if json_lines:
        print(json.dumps({"listening": what, "port": port}), flush=True)
    else:
        print(f"vdno-server {'listening' if what == 'server' else what} on port {port}", flush=True)


def _run(settings: Settings, slots: Any = None, process: int | None = None, json_lines: bool = False) -> None:
    """Serve until SIGTERM or SIGINT (logging is configured). With `slots` (one of several processes) it
    publishes its health there and its metrics into files, for the parent process to serve."""
    import structlog

    from vdno.server.app import build_server

    log = structlog.get_logger("vdno.server")
    worker = {} if process is None else {"process": process}
    running = build_server(settings, slots, share_port=slots is not None)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    host = settings.listen.rpartition(":")[0]
    log.info(
        "server.started",
        listen=f"{host}:{running.port}",
        health_port=running.health_port,
        metrics_port=running.metrics_port,
        pid=os.getpid(),
        **worker,
    )
    _announce("server", running.port, json_lines)
    if running.health_port is not None:
        _announce("health", running.health_port, json_lines)
    if running.metrics_port is not None:
        _announce("metrics", running.metrics_port, json_lines)
    stop.wait()
    log.info("server.stopping", signal=received[0] if received else None, pid=os.getpid(), **worker)
    running.stop(grace=2.0)
    log.info("server.stopped", pid=os.getpid(), **worker)


def _serve_one(
    settings: Settings, shared_health: Any, process: int, metrics_dir: Path, json_lines: bool = False
) -> None:
    """One of several server processes, started by `serve`; `settings` were built once by `serve` (they
    hold no secret, only where the PIN is read from). It publishes its health in `shared_health` and its
    metrics into files in `metrics_dir`, for the parent's listeners."""
    from vdno.server.health import HealthSlots
    from vdno.server.metrics import use_values
    from vdno.server.observability import configure_logging

    log_lines = configure_logging(settings.log_level)
    try:
        use_values(metrics_dir)  # before the first metric is made
        _run(settings, HealthSlots(shared_health, process), process, json_lines)
    finally:
        log_lines.close()  # a worker process exits without running atexit hooks


def _serve_for_workers(
    settings: Settings, shared: Any, workers: list[Any], metrics_dir: Path, json_lines: bool = False
) -> tuple[Callable[[], None], dict[str, int]]:
    """The parent of several server processes serves the health listener and the metrics listener for
    all of them (a worker not started yet or no longer running counts as down) and sets vdno_up from their
    combined health; returns its stop function and the ports it serves."""
    from grpc_health.v1 import health
    from prometheus_client import CollectorRegistry

    from vdno.server.app import SERVICE_NAME
    from vdno.server.health import HealthBoard, ProcessesHealth, serve_health
    from vdno.server.metrics import MetricsListener, ProcessesCollector, ServerMetrics

    publishers: list[Callable[[Any], None]] = []
    stops: list[Callable[[], None]] = []
    ports: dict[str, int] = {}
    if settings.health_listen:
        servicer = health.HealthServicer()
        board = HealthBoard(servicer, (SERVICE_NAME,), source=f"{len(workers)} processes")
        server, ports["health_port"] = serve_health(settings.health_listen, servicer)
        publishers.append(board.publish)
        stops += [servicer.enter_graceful_shutdown, lambda: server.stop(None)]
        _announce("health", ports["health_port"], json_lines)
    if settings.metrics.listen:
        own = ServerMetrics(CollectorRegistry())  # vdno_up: written to the files like the workers' values

        def ended() -> list[int]:
            return [w.pid for w in workers if w.pid is not None and not w.is_alive()]

        served = CollectorRegistry()
        served.register(ProcessesCollector(metrics_dir, ended))
        listener = MetricsListener(settings.metrics, served)
        ports["metrics_port"] = listener.port
        publishers.append(own.health)
        stops.append(listener.stop)
        _announce("metrics", listener.port, json_lines)

    def publish(report: Any) -> None:
        for publisher in publishers:
            publisher(report)

    if publishers:
        combined = ProcessesHealth(
            shared, lambda: [w.is_alive() for w in workers], publish, interval=settings.health_interval
        )
        combined.start()
        stops.insert(0, combined.close)

    def stop() -> None:
        for step in stops:
            step()

    return stop, ports


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", help="TOML settings file"),
    json_output: bool = typer.Option(
        False, "--json", help='announce the ports as JSON lines {"listening": "server", "port": N} on stdout'
    ),
) -> None:
    """Run the service. With [server] processes > 1, that many processes share the port (SO_REUSEPORT)
    and this process serves the health and metrics listeners for all of them. A fixed port is claimed
    first: another vdno-server holding it stops this one at once (exit 2), whatever database either uses.
    Logging is configured before anything else, so every line (the migration's too) is JSON."""
    import structlog

    from vdno.server.observability import configure_logging

    _output["json"] = json_output
    settings = _settings(config)
    log_lines = configure_logging(settings.log_level)
    log = structlog.get_logger("vdno.server")
    log.info(
        "server.starting",
        listen=settings.listen,
        processes=settings.processes,
        threads=settings.threads,
        database=_database_for_log(settings.database_url),
        hsm_token=settings.hsm.token_label,
        hsm_module=str(settings.hsm.module),
        health_listen=settings.health_listen,
        metrics_listen=settings.metrics.listen,
        pid=os.getpid(),
    )
    claim = None
    metrics_dir: Path | None = None
    try:
        from vdno.server.metrics import use_values
        from vdno.server.port_claim import check_shareable, claim_port
        from vdno.server.store.engine import migrate_database

        claim = claim_port(settings.listen)  # held until this process ends
        migrate_database(settings.database_url)  # once, here: worker processes must not race to migrate
        warning = _empty_database_warning(settings)
        if warning is not None:
            log.warning("database.empty", problem=warning)
        if settings.processes == 1:
            use_values(None)
            _run(settings, json_lines=json_output)
            return
        if claim is None:
            _fail("[server] listen needs a fixed port when processes > 1")
        check_shareable(settings.listen)
        from vdno.server.health import COMPONENTS

        # Every process's metrics are files here (prometheus-client's multiprocess mode): set before the
        # workers start, which inherit it, and before this process makes its own metric (vdno_up).
        metrics_dir = Path(tempfile.mkdtemp(prefix="vdno-metrics-"))
        use_values(metrics_dir)
        ctx = multiprocessing.get_context("spawn")
        shared = ctx.RawArray("b", settings.processes * len(COMPONENTS))  # 0 down, 1 up; see server/health.py
        workers = [
            ctx.Process(target=_serve_one, args=(settings, shared, i, metrics_dir, json_output), daemon=False)
            for i in range(settings.processes)
        ]
        # Before the workers: a listener that cannot bind stops nothing but this process. Until the
        # workers run and report, health answers NOT_SERVING.
        stop_listeners, ports = _serve_for_workers(settings, shared, workers, metrics_dir, json_output)
        for w in workers:
            w.start()
        log.info("server.workers_started", pids=[w.pid for w in workers], pid=os.getpid(), **ports)

        def _forward(signum: int, _frame: object) -> None:
            log.info("server.stopping", signal=signal.Signals(signum).name, pid=os.getpid())
            for w in workers:
                if w.is_alive() and w.pid is not None:
                    w.terminate()

        signal.signal(signal.SIGTERM, _forward)
        signal.signal(signal.SIGINT, _forward)
        try:
            for w in workers:
                w.join()
        finally:
            stop_listeners()
        log.info("server.stopped", exit_codes=[w.exitcode for w in workers], pid=os.getpid())
    except ConfigError as exc:  # logged, then one plain line each on stderr once the log is closed
        log.error("server.failed", problems=list(exc.problems))
        log_lines.close()
        _fail_all(exc.problems)
    except VdnoError as exc:
        log.error("server.failed", problem=str(exc))
        log_lines.close()
        _fail(str(exc))
    finally:
        if claim is not None:
            claim.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        log_lines.close()


@app.command()
def init(
    state: Path = typer.Option(Path("state"), "--state", help="state folder to create or complete"),
    bench: list[str] = typer.Option(["bench-01"], "--bench", help="bench ids to enrol and certify"),
    officer: list[str] = typer.Option(
        ["officer-01", "officer-02"], "--officer", help="security officer ids to enrol and certify"
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", envvar="VDNO_DATABASE_URL", help="register state in this database instead"
    ),
    sim: str | None = typer.Option(
        None, "--sim", metavar="HOST:PORT", help="the benches' device transport, for their settings files"
    ),
    dcc: str | None = typer.Option(
        None, "--dcc", metavar="URL", help="the DCC gateway adding the ACB-SMD MAC, for their settings files"
    ),
    json_output: bool = typer.Option(False, "--json", help="print {state, changed, changes} as JSON"),
) -> None:
    """Initialise (idempotently) the embedded default in a state folder. Each new bench's settings file
    (clients/<bench>.toml) names --sim and --dcc when given (a commented placeholder otherwise)."""
    from vdno.server.bootstrap import BenchParts, initialise_state
    from vdno.server.config import host_port_problem, normalise_database_url

    _output["json"] = json_output

    if sim is not None and (problem := host_port_problem(sim)):
        _fail(f"--sim: {problem}")
    if dcc is not None and not dcc.startswith(("http://", "https://")):
        _fail(f"--dcc: must be an http:// or https:// URL — got {dcc!r}")
    if database_url is not None:
        try:
            database_url = normalise_database_url(database_url, Path.cwd(), check_files=True)
        except ValueError as exc:
            _fail(f"--database-url (or VDNO_DATABASE_URL): {exc}")
    try:
        changes = initialise_state(
            state,
            tuple(bench),
            database_url,
            tuple(officer),
            bench_parts=BenchParts(sim, dcc),
            show=not json_output,
        )
    except ConfigError as exc:
        _fail_all(exc.problems)
    except VdnoError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot initialise {state}: {exc.strerror or exc}{_filename(exc)}")
    if json_output:
        document = {"state": str(state.resolve()), "changed": bool(changes), "changes": changes}
        typer.echo(json.dumps(document, indent=2))


def _filename(exc: OSError) -> str:
    return f" ({exc.filename})" if exc.filename else ""


@app.command("verify-audit")
def verify_audit(
    config: Path = typer.Option(..., "--config", help="TOML settings file"),
    json_output: bool = typer.Option(False, "--json", help="print {intact, entries, problem} as JSON"),
    workers: int = typer.Option(
        1,
        "--workers",
        min=0,
        help="processes walking a log of 1,000,000 entries or more in seq ranges; 0: one a CPU; 1: one pass",
    ),
) -> None:
    """Check the hash-chained audit log end to end (offline). Exit 0 only if it is intact; 1 broken; 2 a
    configuration problem; 3 the database or its audit log cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from vdno.server.store.audit import verify_chain, worker_count
    from vdno.server.store.engine import make_engine

    _output["json"] = json_output
    settings = _settings(config, check_files=False)  # needs only the database: no TLS, HSM or CA file
    engine = make_engine(settings.database_url)
    try:
        result = verify_chain(engine, worker_count(workers))
    except VdnoError as exc:  # StoreUnavailable: the database or its audit tables cannot be read
        _fail(str(exc), exit_codes.UNAVAILABLE)
    except SQLAlchemyError as exc:
        _fail(f"cannot read the audit log: {str(exc).strip().splitlines()[0]}", exit_codes.UNAVAILABLE)
    finally:
        engine.dispose()
    if json_output:
        document = {
            "intact": result.ok,
            "entries": result.entries,
            "problem": None if result.ok else result.problem,
        }
        typer.echo(json.dumps(document, indent=2))
    if result.ok:
        if not json_output:
            typer.echo(f"audit log intact: {result.entries} entries")
        return
    typer.echo(
        f"vdno-server: audit log broken after {result.entries} good entries: {result.problem}", err=True
    )
    raise typer.Exit(exit_codes.REFUSED)


if __name__ == "__main__":
    sys.exit(app())
