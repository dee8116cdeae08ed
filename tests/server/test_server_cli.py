"""`vdno-server` as an operator runs it: a configuration, database or start-up problem is one line per
problem on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from config_testlib import replace_line, write_config, write_lab_files

from vdno.server.store.engine import make_engine

SERVER = [sys.executable, "-m", "vdno.server.main"]


def vdno_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=60, check=False, env=env)


def assert_usage_error(done: subprocess.CompletedProcess[str], lines: list[str]) -> None:
    """Exit 2 with `lines` as the plain lines of stderr, after the JSON log lines of a server that had
    started logging (each such problem is also a `server.failed` event there)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    logged = [line for line in done.stderr.splitlines() if line.startswith("{")]
    assert [json.loads(line)["event"] for line in logged][-1:] in ([], ["server.failed"])
    assert [line for line in done.stderr.splitlines() if not line.startswith("{")] == lines
    assert done.stdout == ""


def test_serve_reports_every_problem_of_its_config_in_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:99999"\nthreadz = 4\nlog_level = "loud"\n'
        '[database]\nurl = "mysql://vdno@db/vdno"\n'
        '[tls]\nserver_certificate = "tls/server.pem"\n'
        "[metricz]\n"
    )
    prefix = "vdno-server:   "
    assert_usage_error(
        vdno_server("serve", "--config", str(config)),
        [
            f"vdno-server: {config}: 10 configuration problem(s)",
            prefix + "[server] listen: port 99999 is outside 0-65535",
            prefix + "[server] log_level: must be one of debug, info, warning, error — got 'loud'",
            prefix + "[server] threadz: unknown key (did you mean threads?)",
            prefix + "[database] url: mysql://vdno@db/vdno: dialect 'mysql' is not supported; use "
            "sqlite:///FILE or postgresql+psycopg://USER@HOST/DB (psycopg 3)",
            prefix
            + f"[tls] server_certificate: cannot read {tmp_path}/tls/server.pem: No such file or directory",
            prefix + "[tls] server_key: required",
            prefix + "[tls] client_ca: required",
            prefix + "[hsm]: required",
            prefix + "[trust]: required",
            prefix + "[metricz]: unknown table (did you mean metrics?) (tables: server, database, tls, hsm, "
            "trust, custody, enrolment, audit, metrics)",
        ],
    )


def test_a_config_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    for command in ("serve", "verify-audit"):
        assert_usage_error(
            vdno_server(command, "--config", str(missing)),
            [f"vdno-server: {missing}: cannot read {missing}: No such file or directory"],
        )


def test_verify_audit_needs_only_the_database_and_names_one_it_cannot_read(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # no file it names exists: verify-audit reads none of them
    replace_line(config, 'url = "sqlite:///vdno.db"', 'url = "sqlite:///never-migrated.db"')
    done = vdno_server("verify-audit", "--config", str(config))
    assert done.returncode == 3 and "Traceback" not in done.stderr  # the database cannot be read
    assert done.stderr.startswith(
        f"vdno-server: the audit log in sqlite:///{tmp_path}/never-migrated.db cannot be read: "
        "(sqlite3.OperationalError) no such table"
    )
    assert len(done.stderr.splitlines()) == 1
    replace_line(config, "[server]", "[server]\nthreads = -1")
    assert_usage_error(
        vdno_server("verify-audit", "--config", str(config)),
        [f"vdno-server: {config}: [server] threads: must be at least 1 — got -1"],
    )


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("mysql://vdno:s3cret@db/vdno", "mysql://vdno:***@db/vdno: dialect 'mysql' is not supported; use"),
        ("sqlite:///no/such/folder/x.db", "sqlite:///no/such/folder/x.db: folder "),
    ],
)
def test_init_names_an_unusable_database_url(tmp_path: Path, url: str, line: str) -> None:
    done = vdno_server("init", "--state", str(tmp_path / "state"), "--database-url", url)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "s3cret" not in done.stderr
    assert done.stderr.startswith(f"vdno-server: --database-url (or VDNO_DATABASE_URL): {line}")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_serve_names_the_migration_that_failed(tmp_path: Path) -> None:
    """A database whose schema has a table the next revision makes: one line, the revision and the error."""
    write_lab_files(tmp_path)
    config = write_config(tmp_path)
    from alembic import command
    from alembic.config import Config

    from vdno.server.store.engine import MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'vdno.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql("CREATE TABLE hand_in_orders (x INTEGER)")
    engine.dispose()
    assert_usage_error(
        vdno_server("serve", "--config", str(config)),
        [
            "vdno-server: database migration 0002 (Hand-in orders, the fleet's custody state and history, "
            "officers.) failed: (sqlite3.OperationalError) table hand_in_orders already exists"
        ],
    )


def test_with_json_a_config_problem_is_one_json_error_object_on_stdout(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:99999"\nthreadz = 4\n')
    for command in ("serve", "verify-audit"):
        done = vdno_server(command, "--config", str(config), "--json")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        error = json.loads(done.stdout)
        assert error["error_code"] == "USAGE_ERROR" and error["exit_code"] == 2
        assert "[server] listen: port 99999 is outside 0-65535" in error["problems"]
        assert "[server] threadz: unknown key (did you mean threads?)" in error["problems"]
        assert "vdno-server:   [server] threadz: unknown key (did you mean threads?)" in done.stderr
