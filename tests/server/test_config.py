"""load_settings: the schema of the server's TOML file and its environment overrides. Every mistake is
reported, all at once, one line each naming its key (or the variable that set it)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from config_testlib import replace_line, write_config, write_lab_files
from pydantic import ValidationError

from vdno.labpki.smki import new_p256_key
from vdno.labpki.store import write_private_key
from vdno.server.config import ConfigError, ServerTable, Settings, load_settings

NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every file the configuration names (one per module: the tests only read it)."""
    folder = tmp_path_factory.mktemp("lab")
    write_lab_files(folder)
    return folder


def problems(path: Path, env: dict[str, str] | None = None, check_files: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, NO_ENV if env is None else env, check_files=check_files)
    assert str(caught.value) == "; ".join(caught.value.problems)
    return list(caught.value.problems)


def test_a_complete_file_gives_the_values_the_service_reads(lab: Path) -> None:
    settings = load_settings(write_config(lab), NO_ENV)
    assert (settings.listen, settings.processes, settings.threads, settings.log_level) == (
        "127.0.0.1:0",
        1,
        16,
        "info",
    )
    assert settings.database_url == f"sqlite:///{lab / 'vdno.db'}"  # relative to the file
    assert settings.write_lock_wait == 5.0
    assert (settings.hsm.reconnect_first, settings.hsm.reconnect_max) == (0.2, 5.0)
    assert (settings.health_listen, settings.health_interval) == ("127.0.0.1:0", 1.0)
    assert settings.tls.server_key == lab / "tls" / "server.key"
    assert settings.hsm.pin_file == lab / "secrets" / "user.pin"
    assert settings.enrolment.client_ca_key == lab / "pki" / "tls-ca.key"
    assert (
        settings.audit is not None and settings.audit.public_key == lab / "pki" / "audit-checkpoint-key.pem"
    )
    assert settings.custody.destroy_grace_days == 7
    assert settings.hsm.read_pin(NO_ENV) == "1234"
    assert settings.hsm.read_pin({"VDNO_TEST_HSM_PIN": "from-env"}) == "from-env"


def test_values(lab: Path) -> None:
    settings = load_settings(
        write_config(
            lab,
            server='health_listen = "0.0.0.0:8081"\nhealth_interval = 0.5\nlog_level = "debug"',
            database="write_lock_wait = 1.5",
            hsm="reconnect_first = 0.1\nreconnect_max = 2",
        ),
        NO_ENV,
    )
    assert settings.write_lock_wait == 1.5
    assert (settings.hsm.reconnect_first, settings.hsm.reconnect_max) == (0.1, 2.0)
    assert (settings.health_listen, settings.health_interval) == ("0.0.0.0:8081", 0.5)
    assert settings.log_level == "debug"


def test_settings_are_frozen_and_travel_to_worker_processes(lab: Path) -> None:
    settings = load_settings(write_config(lab), NO_ENV)
    with pytest.raises(ValidationError, match="frozen"):
        settings.server.threads = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(settings)) == settings  # spawn pickles them for each worker


def test_the_health_listener_is_disabled_by_an_empty_address(lab: Path) -> None:
    path = write_config(lab)
    replace_line(path, 'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nhealth_listen = ""')
    assert load_settings(path, NO_ENV).health_listen == ""
    path = write_config(lab)
    assert load_settings(path, {"VDNO_HEALTH_LISTEN": ""}).health_listen == ""
    assert load_settings(path, {"VDNO_HEALTH_LISTEN": "127.0.0.1:9"}).health_listen == "127.0.0.1:9"


def test_the_environment_overrides_the_file(lab: Path) -> None:
    path = write_config(lab)
    replace_line(path, 'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:50051"')
    env = {
        "VDNO_LISTEN": "127.0.0.1:6000",
        "VDNO_PROCESSES": "3",
        "VDNO_DATABASE_URL": "postgresql+psycopg://vdno@db.example/vdno",
    }
    settings = load_settings(path, env)
    assert (settings.listen, settings.processes, settings.database_url) == (
        "127.0.0.1:6000",
        3,
        "postgresql+psycopg://vdno@db.example/vdno",
    )
    # empty variables are not values (but for VDNO_HEALTH_LISTEN, above)
    assert load_settings(path, {"VDNO_LISTEN": "", "VDNO_PROCESSES": ""}).listen == "127.0.0.1:50051"


def test_the_metrics_listener_is_loopback_by_default_and_disabled_by_an_empty_address(lab: Path) -> None:
    assert load_settings(write_config(lab), NO_ENV).metrics.listen == "127.0.0.1:0"
    path = write_config(lab, extra='[metrics]\nlisten = "[::1]:9464"')
    assert load_settings(path, NO_ENV).metrics.address == ("::1", 9464)
    assert load_settings(path, {"VDNO_METRICS_LISTEN": ""}).metrics.listen == ""
    assert load_settings(path, {"VDNO_METRICS_LISTEN": "0.0.0.0:9"}).metrics.address == ("0.0.0.0", 9)


# (table it goes in, TOML lines, the one problem reported)
MISTAKES = [
    ("server", "threadz = 4", "[server] threadz: unknown key (did you mean threads?)"),
    ("extra", '[metrics]\nlisten = "9464"', "[metrics] listen: "),
    ("extra", '[metrics]\nlisten = "127.0.0.1:99999"', "[metrics] listen: port 99999 is outside 0-65535"),
    ("extra", "[metrics]\nlisten = 9464", "[metrics] listen: must be a string — got 9464"),
    ("extra", '[metrics]\nport = "9464"', "[metrics] port: unknown key"),
    (
        "server",
        'log_level = "loud"',
        "[server] log_level: must be one of debug, info, warning, error — got 'loud'",
    ),
    ("server", 'threads = "16"', "[server] threads: must be an integer — got '16'"),
    ("server", "threads = 0", "[server] threads: must be at least 1 — got 0"),
    ("server", "processes = true", "[server] processes: must be an integer — got true"),
    ("server", "health_interval = 0", "[server] health_interval: must be more than 0 — got 0"),
    ("server", "health_interval = 7200", "[server] health_interval: must be at most 3600 — got 7200"),
    ("server", "health_listen = 8081", "[server] health_listen: must be a string — got 8081"),
    ("server", 'health_listen = "127.0.0.1:99999"', "[server] health_listen: port 99999 is outside 0-65535"),
    (
        "server",
        'health_listen = "localhost"',
        "[server] health_listen: must be HOST:PORT (port 0 picks a free one)",
    ),
    (
        "server",
        "processes = 2",
        "[server] processes: 2 processes share a fixed port: [server] listen must not",
    ),
    ("database", "write_lock_wait = 0", "[database] write_lock_wait: must be more than 0 — got 0"),
    ("database", 'write_lock_wait = "5"', "[database] write_lock_wait: must be a number — got '5'"),
    ("database", "timeout = 3", "[database] timeout: unknown key"),
    ("tls", 'client_key = "k"', "[tls] client_key: unknown key"),
    ("hsm", "reconnect_first = -1", "[hsm] reconnect_first: must be more than 0 — got -1"),
    ("hsm", "reconnect_max = true", "[hsm] reconnect_max: must be a number — got true"),
    (
        "hsm",
        "reconnect_first = 3\nreconnect_max = 2",
        "[hsm] reconnect_max: must not be less than reconnect_first",
    ),
    (
        "hsm",
        'softhsm_conf = "softhsm2.conf"',
        "[hsm] softhsm_conf: cannot read {lab}/softhsm2.conf: No such file",
    ),
    ("trust", 'extra_ca = "x.pem"', "[trust] extra_ca: unknown key"),
    (
        "extra",
        "[metricz]\nlisten = 1",
        "[metricz]: unknown table (did you mean metrics?) (tables: server, database, tls, hsm, trust,",
    ),
    (
        "extra",
        "[custody]\ndestroy_grace_days = 3",
        "[custody] destroy_grace_days: must be at least 7 — got 3",
    ),
    (
        "extra",
        "[custody]\napprovals_required = 1.5",
        "[custody] approvals_required: must be an integer — got 1.5",
    ),
    (
        "extra",
        "[custody]\napprovals = 2",
        "[custody] approvals: unknown key (did you mean approvals_required?)",
    ),
]


@pytest.mark.parametrize(("table", "lines", "problem"), MISTAKES)
def test_each_mistake_is_named_by_its_key(lab: Path, table: str, lines: str, problem: str) -> None:
    found = problems(write_config(lab, **{table: lines}))
    assert len(found) == 1, found
    assert found[0].startswith(problem.format(lab=lab)), found


# (the line as write_config writes it, what it becomes, the one problem reported)
REPLACED = [
    (
        'listen = "127.0.0.1:0"',
        'listen = "127.0.0.1:99999"',
        "[server] listen: port 99999 is outside 0-65535",
    ),
    ('listen = "127.0.0.1:0"', 'listen = ":50051"', "[server] listen: must be HOST:PORT (port 0 picks"),
    (
        'listen = "127.0.0.1:0"',
        'listen = "::1:50051"',
        "[server] listen: must be HOST:PORT with an IPv6 host in",
    ),
    (
        'token_label = "vdno"',
        'token_label = ""',
        "[hsm] token_label: must be 1 to 32 bytes (a PKCS#11 token label)",
    ),
    ('pin_env = "VDNO_TEST_HSM_PIN"', 'pin_env = "1PIN"', "[hsm] pin_env: must name an environment variable"),
    (
        'key_uri = "pkcs11:',
        'key_uri = "',
        "[audit] key_uri: must be a PKCS#11 URI (pkcs11:...) — got 'token=vdno",
    ),
    (
        '[audit]\nkey_uri = "pkcs11:token=vdno;object=vdno-audit;type=private"\n',
        "",
        "[enrolment] public_key: unk",
    ),
    ('server_key = "tls/server.key"\n', "", "[tls] server_key: required"),
    ("[trust]", "trust = 1\n[trusted]", "[trusted]: unknown table"),
    ("[audit]", 'audit = "yes"\n[audit2]', "[audit2]: unknown table"),
]


@pytest.mark.parametrize(("old", "new", "problem"), REPLACED)
def test_each_changed_line_is_named_by_its_key(lab: Path, old: str, new: str, problem: str) -> None:
    path = write_config(lab)
    replace_line(path, old, new)
    found = problems(path)
    assert any(p.startswith(problem) for p in found), found


def test_a_key_outside_any_table_and_a_scalar_for_a_table_are_named(lab: Path) -> None:
    path = write_config(lab)
    path.write_text('threads = 4\ncustody = "strict"\n' + path.read_text())
    assert problems(path) == [
        "[custody]: must be a table — got 'strict'",
        "threads: unknown key outside any table (keys belong in a table such as [server])",
    ]


DATABASE_URLS = [
    (
        "not a url",
        "[database] url: is not a SQLAlchemy URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)",
    ),
    ("mysql://vdno@db/vdno", "[database] url: mysql://vdno@db/vdno: dialect 'mysql' is not supported; use"),
    ("postgresql://vdno@db/vdno", "[database] url: postgresql://vdno@db/vdno: dialect 'postgresql' is not"),
    ("sqlite://", "[database] url: sqlite://: the SQLite database must be a file, sqlite:///FILE"),
    ("sqlite:///:memory:", "[database] url: sqlite:///:memory:: the SQLite database must be a file"),
    (
        "sqlite:///no/such/folder/vdno.db",
        "[database] url: sqlite:///no/such/folder/vdno.db: folder {lab}/no/such",
    ),
]


@pytest.mark.parametrize(("url", "problem"), DATABASE_URLS)
def test_an_unusable_database_url_is_named(lab: Path, url: str, problem: str) -> None:
    path = write_config(lab)
    replace_line(path, 'url = "sqlite:///vdno.db"', f'url = "{url}"')
    assert [p[: len(problem.format(lab=lab))] for p in problems(path)] == [problem.format(lab=lab)]


def test_a_database_password_is_never_shown(lab: Path) -> None:
    path = write_config(lab)
    replace_line(path, 'url = "sqlite:///vdno.db"', 'url = "mysql://vdno:s3cret@db/vdno"')
    (found,) = problems(path)
    assert "s3cret" not in found and "mysql://vdno:***@db/vdno" in found
    (found,) = problems(write_config(lab), {"VDNO_DATABASE_URL": "postgresql+psycopg2://vdno:s3cret@db/x"})
    assert "s3cret" not in found


def test_each_file_that_cannot_be_used_is_named_with_its_key(lab: Path, tmp_path: Path) -> None:
    """The same names, in a folder where each file is missing or wrong in its own way."""
    write_lab_files(tmp_path)
    (tmp_path / "tls" / "server.pem").unlink()
    (tmp_path / "tls" / "server.key").write_text("not a key")
    (tmp_path / "pki" / "tls-ca.pem").unlink()
    (tmp_path / "pki" / "tls-ca.pem").mkdir()
    (tmp_path / "lib" / "pkcs11-module.so").unlink()
    (tmp_path / "secrets" / "user.pin").write_text("\n")
    (tmp_path / "pki" / "root-ca.pem").write_bytes(b"")
    (tmp_path / "pki" / "issuing-ca.pem").write_bytes((tmp_path / "tls" / "server.key").read_bytes())
    (tmp_path / "pki" / "device-ca.pem").chmod(0o000)
    (tmp_path / "pki" / "audit-checkpoint-key.pem").write_text("not a key")
    (tmp_path / "pki" / "tls-ca.key").unlink()
    found = problems(write_config(tmp_path))
    expected = [
        f"[tls] server_certificate: cannot read {tmp_path}/tls/server.pem: No such file or directory",
        f"[tls] server_key: {tmp_path}/tls/server.key holds no PEM private key",
        f"[tls] client_ca: {tmp_path}/pki/tls-ca.pem is a folder, not a file",
        f"[hsm] module: cannot read {tmp_path}/lib/pkcs11-module.so: No such file or directory",
        f"[hsm] pin_file: {tmp_path}/secrets/user.pin is empty, and VDNO_TEST_HSM_PIN (hsm.pin_env) is not",
        f"[trust] root_ca: {tmp_path}/pki/root-ca.pem is not an SMKI CA certificate: ",
        f"[trust] issuing_ca: {tmp_path}/pki/issuing-ca.pem is not an SMKI CA certificate: ",
        f"[trust] device_ca: cannot read {tmp_path}/pki/device-ca.pem: Permission denied",
        f"[enrolment] client_ca_key: cannot read {tmp_path}/pki/tls-ca.key: No such file or directory",
        f"[audit] public_key: {tmp_path}/pki/audit-checkpoint-key.pem is unusable: not a PEM public key",
    ]
    if os.geteuid() == 0:  # root reads a file whatever its mode
        expected.remove(f"[trust] device_ca: cannot read {tmp_path}/pki/device-ca.pem: Permission denied")
    assert [p[: len(e)] for p, e in zip(found, expected, strict=True)] == expected


def test_a_pin_in_the_environment_stands_in_for_the_pin_file(lab: Path, tmp_path: Path) -> None:
    write_lab_files(tmp_path)
    (tmp_path / "secrets" / "user.pin").unlink()
    path = write_config(tmp_path)
    assert problems(path) == [
        f"[hsm] pin_file: cannot read {tmp_path}/secrets/user.pin: No such file or directory, and "
        "VDNO_TEST_HSM_PIN (hsm.pin_env) is not set"
    ]
    assert load_settings(path, {"VDNO_TEST_HSM_PIN": "1234"}).hsm.pin_env == "VDNO_TEST_HSM_PIN"
    replace_line(path, 'pin_file = "secrets/user.pin"\npin_env = "VDNO_TEST_HSM_PIN"\n', "")
    assert problems(path) == [
        "[hsm] pin_file: required: the file holding the user PIN (or pin_env, a variable holding it)"
    ]


def test_keys_that_are_not_their_certificates_are_named(lab: Path, tmp_path: Path) -> None:
    write_lab_files(tmp_path)
    for name in ("tls/server.key", "pki/tls-ca.key"):
        write_private_key(tmp_path / name, new_p256_key())
    path = write_config(tmp_path)
    assert problems(path) == [
        f"[tls] server_key: {tmp_path}/tls/server.key is not the key of server_certificate "
        f"{tmp_path}/tls/server.pem"
    ]
    # once the TLS key is right, the whole file's check finds the enrolment key
    write_lab_files(other := tmp_path / "other")
    replace_line(
        path, 'server_certificate = "tls/server.pem"', f'server_certificate = "{other}/tls/server.pem"'
    )
    replace_line(path, 'server_key = "tls/server.key"', f'server_key = "{other}/tls/server.key"')
    assert problems(path) == [
        f"[enrolment] client_ca_key: {tmp_path}/pki/tls-ca.key is not the key of tls.client_ca "
        f"{tmp_path}/pki/tls-ca.pem"
    ]


def test_without_check_files_no_file_is_read(tmp_path: Path) -> None:
    """Offline tools (verify-audit, vdno-admin audit) need only the database and the audit key."""
    settings = load_settings(write_config(tmp_path), NO_ENV, check_files=False)
    assert settings.tls.server_certificate == tmp_path / "tls" / "server.pem"
    assert settings.database_url == f"sqlite:///{tmp_path / 'vdno.db'}"


def test_several_mistakes_are_reported_at_once_in_file_order(lab: Path) -> None:
    path = write_config(
        lab,
        server='threadz = 4\nlog_level = "loud"',
        hsm="reconnect_first = 3\nreconnect_max = 2",
        extra="[custody]\ndestroy_grace_days = 31",
    )
    replace_line(path, 'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:99999"')
    replace_line(path, 'url = "sqlite:///vdno.db"', 'url = "oracle://x@y/z"')
    assert problems(path) == [
        "[server] listen: port 99999 is outside 0-65535",
        "[server] log_level: must be one of debug, info, warning, error — got 'loud'",
        "[server] threadz: unknown key (did you mean threads?)",
        "[database] url: oracle://x@y/z: dialect 'oracle' is not supported; use sqlite:///FILE or "
        "postgresql+psycopg://USER@HOST/DB (psycopg 3)",
        "[hsm] reconnect_max: must not be less than reconnect_first (3) — got 2",
        "[custody] destroy_grace_days: must be at most 30 — got 31",
    ]


def test_environment_overrides_are_validated_and_named_by_their_variable(lab: Path) -> None:
    env = {
        "VDNO_LISTEN": "0.0.0.0:99999",
        "VDNO_HEALTH_LISTEN": "health",
        "VDNO_PROCESSES": "four",
        "VDNO_DATABASE_URL": "mongodb://db/vdno",
    }
    assert problems(write_config(lab), env) == [
        "VDNO_LISTEN (overrides [server] listen): port 99999 is outside 0-65535",
        "VDNO_PROCESSES (overrides [server] processes): must be an integer — got 'four'",
        "VDNO_HEALTH_LISTEN (overrides [server] health_listen): must be HOST:PORT (port 0 picks a free one) "
        "— got 'health'",
        "VDNO_DATABASE_URL (overrides [database] url): mongodb://db/vdno: dialect 'mongodb' is not "
        "supported; use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB (psycopg 3)",
    ]
    assert problems(write_config(lab), {"VDNO_PROCESSES": "0"}) == [
        "VDNO_PROCESSES (overrides [server] processes): must be at least 1 — got 0"
    ]


def test_an_unreadable_or_broken_file_is_one_problem(tmp_path: Path) -> None:
    assert problems(tmp_path / "missing.toml") == [
        f"cannot read {tmp_path}/missing.toml: No such file or directory"
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    (found,) = problems(broken)
    assert found.startswith(f"{broken} is not valid TOML: ")


def test_another_table_is_one_model_and_one_field() -> None:
    """How the schema grows (e.g. [metrics]): a Table subclass and a field of Settings with its default."""
    assert set(Settings.model_fields) == {
        "server",
        "database",
        "tls",
        "hsm",
        "trust",
        "custody",
        "enrolment",
        "audit",
        "metrics",
    }
    assert ServerTable().listen == "127.0.0.1:50051"
