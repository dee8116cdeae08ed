"""`vdno-server serve`'s parts that need no token: the database URL as it is logged, and the parent of
several processes with both of its listeners disabled."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from vdno.server.config import MetricsConfig, load_settings
from vdno.server.main import _database_for_log, _serve_for_workers

CONFIG = """
[server]
listen = "127.0.0.1:0"
health_listen = ""
[database]
url = "sqlite:///vdno.db"
[tls]
server_certificate = "tls/server.pem"
server_key = "tls/server.key"
client_ca = "pki/tls-ca.pem"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "vdno"
pin_file = "secrets/user.pin"
[trust]
root_ca = "pki/root-ca.pem"
issuing_ca = "pki/issuing-ca.pem"
device_ca = "pki/device-ca.pem"
[metrics]
listen = ""
"""


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (
            "postgresql+psycopg://vdno:s3cret-pw@db.example:5432/vdno",
            "postgresql+psycopg://vdno:***@db.example:5432/vdno",
        ),
        (
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        ),
        ("sqlite:////srv/vdno/vdno.db", "sqlite:////srv/vdno/vdno.db"),
        ("not a url", "(not a database URL)"),
    ],
)
def test_the_database_url_is_logged_without_its_password(url: str, logged: str) -> None:
    assert _database_for_log(url) == logged
    assert "s3cret" not in _database_for_log(url)


def test_a_parent_with_both_listeners_disabled_serves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    settings = load_settings(path, {}, check_files=False)  # no TLS, HSM or CA file needed here
    assert (settings.health_listen, settings.metrics) == ("", MetricsConfig(listen=""))
    ctx = multiprocessing.get_context("spawn")
    shared = ctx.RawArray("b", 4)
    stop, ports = _serve_for_workers(settings, shared, [ctx.Process(target=print)], tmp_path)
    stop()
    assert ports == {} and capsys.readouterr().out == ""
    enabled = settings.model_copy(update={"metrics": MetricsConfig(listen="127.0.0.1:0")})
    stop, ports = _serve_for_workers(enabled, shared, [ctx.Process(target=print)], tmp_path)
    stop()
    assert list(ports) == ["metrics_port"]
    assert capsys.readouterr().out == f"vdno-server metrics on port {ports['metrics_port']}\n"
