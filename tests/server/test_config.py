"""load_settings: the keys of the fault-handling settings, their defaults and their checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, load_settings

BASE = """
[server]
{server}
[database]
url = "sqlite:///vdno.db"
{database}
[tls]
server_certificate = "tls/server.pem"
server_key = "tls/server.key"
client_ca = "pki/tls-ca.pem"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "vdno"
pin_file = "secrets/user.pin"
{hsm}
[trust]
root_ca = "pki/root-ca.pem"
issuing_ca = "pki/issuing-ca.pem"
device_ca = "pki/device-ca.pem"
"""


def settings_of(tmp_path: Path, server: str = "", database: str = "", hsm: str = "", **env: str):
    path = tmp_path / "config.toml"
    path.write_text(BASE.format(server=server, database=database, hsm=hsm))
    return load_settings(path, env)


def test_defaults(tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    assert settings.write_lock_wait == 5.0
    assert (settings.hsm.reconnect_first, settings.hsm.reconnect_max) == (0.2, 5.0)
    assert (settings.health_listen, settings.health_interval) == ("127.0.0.1:0", 1.0)


def test_values(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path,
        server='health_listen = "0.0.0.0:8081"\nhealth_interval = 0.5',
        database="write_lock_wait = 1.5",
        hsm="reconnect_first = 0.1\nreconnect_max = 2",
    )
    assert settings.write_lock_wait == 1.5
    assert (settings.hsm.reconnect_first, settings.hsm.reconnect_max) == (0.1, 2.0)
    assert (settings.health_listen, settings.health_interval) == ("0.0.0.0:8081", 0.5)


def test_the_health_listener_is_disabled_by_an_empty_address(tmp_path: Path) -> None:
    assert settings_of(tmp_path, server='health_listen = ""').health_listen == ""
    assert settings_of(tmp_path, VDNO_HEALTH_LISTEN="").health_listen == ""
    assert settings_of(tmp_path, VDNO_HEALTH_LISTEN="127.0.0.1:9").health_listen == "127.0.0.1:9"


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("database", "write_lock_wait = 0", r"\[database\] write_lock_wait must be a number of seconds"),
        ("database", 'write_lock_wait = "5"', r"\[database\] write_lock_wait must be a number of seconds"),
        ("hsm", "reconnect_first = -1", r"\[hsm\] reconnect_first must be a number of seconds"),
        ("hsm", "reconnect_max = true", r"\[hsm\] reconnect_max must be a number of seconds"),
        ("hsm", "reconnect_first = 3\nreconnect_max = 2", r"reconnect_max must not be less than"),
        ("server", "health_listen = 8081", r"\[server\] health_listen must be"),
        ("server", "health_interval = 0", r"\[server\] health_interval must be a number of seconds"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, section: str, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_of(tmp_path, **{section: line})


def test_the_metrics_listener_is_loopback_by_default_and_disabled_by_an_empty_address(tmp_path: Path) -> None:
    assert settings_of(tmp_path).metrics.listen == "127.0.0.1:0"
    path = tmp_path / "config.toml"
    path.write_text(BASE.format(server="", database="", hsm="") + '[metrics]\nlisten = "[::1]:9464"\n')
    assert load_settings(path, {}).metrics.address == ("::1", 9464)
    assert load_settings(path, {"VDNO_METRICS_LISTEN": ""}).metrics.listen == ""
    assert load_settings(path, {"VDNO_METRICS_LISTEN": "0.0.0.0:9"}).metrics.address == ("0.0.0.0", 9)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('listen = "9464"', r'\[metrics\] listen must be "host:port" or ""'),
        ('listen = "127.0.0.1:99999"', r"\[metrics\] listen must be"),
        ("listen = 9464", r"\[metrics\] listen must be"),
        ('port = "9464"', r"\[metrics\] unknown keys: port"),
    ],
)
def test_bad_metrics_settings_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(BASE.format(server="", database="", hsm="") + f"[metrics]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path, {})
