"""Bench and officer settings: flags over the environment over the file; the file is --config, else the
one VDNO_BENCH_CONFIG (VDNO_ADMIN_CONFIG for vdno-admin) names, so a bench set up once needs no flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdno.client.settings import BenchSettings, SettingsError

BENCH_FILE = """\
[bench]
server = "custodian.example:50051"
server_name = "localhost"
ca = "pki/tls-ca.pem"
cert = "tls/bench-01.pem"
key = "/etc/vdno/bench-01.key"
sim = "127.0.0.1:7000"
dcc = "http://127.0.0.1:8080/duis"
"""
NO_FLAGS: dict[str, object] = {}


def bench_file(folder: Path, text: str = BENCH_FILE) -> Path:
    path = folder / "bench.toml"
    path.write_text(text)
    return path


def test_the_file_alone_gives_every_setting_with_paths_relative_to_it(tmp_path: Path) -> None:
    settings = BenchSettings.load(bench_file(tmp_path), NO_FLAGS, environ={})
    assert settings == BenchSettings(
        server="custodian.example:50051",
        ca=tmp_path / "pki" / "tls-ca.pem",
        cert=tmp_path / "tls" / "bench-01.pem",
        key=Path("/etc/vdno/bench-01.key"),
        server_name="localhost",
        sim="127.0.0.1:7000",
        dcc="http://127.0.0.1:8080/duis",
    )
    assert settings.server_address() == ("custodian.example", 50051)


def test_the_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    env = {"VDNO_SERVER": "10.0.0.5:50051", "VDNO_SIM": "127.0.0.1:7001", "VDNO_DCC": "http://dcc/duis"}
    settings = BenchSettings.load(bench_file(tmp_path), NO_FLAGS, environ=env)
    assert (settings.server, settings.sim, settings.dcc) == (
        "10.0.0.5:50051",
        "127.0.0.1:7001",
        "http://dcc/duis",
    )
    assert settings.server_name == "localhost"  # from the file: no variable set
    settings = BenchSettings.load(bench_file(tmp_path), {"server": "127.0.0.1:1", "sim": None}, environ=env)
    assert (settings.server, settings.sim) == ("127.0.0.1:1", "127.0.0.1:7001")
    empty = {"VDNO_SERVER": ""}  # an empty variable is no value
    assert (
        BenchSettings.load(bench_file(tmp_path), NO_FLAGS, environ=empty).server == "custodian.example:50051"
    )


def test_without_config_the_file_named_by_the_environment_is_read(tmp_path: Path) -> None:
    path = bench_file(tmp_path)
    settings = BenchSettings.load(None, NO_FLAGS, environ={"VDNO_BENCH_CONFIG": str(path)})
    assert settings.cert == tmp_path / "tls" / "bench-01.pem"
    other = tmp_path / "other"
    other.mkdir()
    chosen = BenchSettings.load(bench_file(other), NO_FLAGS, environ={"VDNO_BENCH_CONFIG": str(path)})
    assert chosen.cert == other / "tls" / "bench-01.pem"  # --config wins
    admin = bench_file(tmp_path / "other", BENCH_FILE.replace("[bench]", "[admin]"))
    settings = BenchSettings.load(None, NO_FLAGS, {"VDNO_ADMIN_CONFIG": str(admin)}, section="admin")
    assert settings.server == "custodian.example:50051"
    with pytest.raises(SettingsError, match="missing --server, --ca, --cert, --key"):
        BenchSettings.load(None, NO_FLAGS, {"VDNO_BENCH_CONFIG": str(admin)}, section="admin")


NOWHERE = "/no/such/bench.toml"


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (None, {"VDNO_BENCH_CONFIG": NOWHERE}, f"cannot read VDNO_BENCH_CONFIG {NOWHERE}: No such file"),
        (Path(NOWHERE), {}, f"cannot read --config {NOWHERE}: No such file or directory"),
        (None, {}, "missing --server, --ca, --cert, --key (give them as flags, in --config FILE, or in the "
         "file VDNO_BENCH_CONFIG names)"),
    ],
)  # fmt: skip
def test_a_missing_file_or_setting_is_named(config: Path | None, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        BenchSettings.load(config, NO_FLAGS, environ=env)
    assert str(caught.value).startswith(message)


def test_a_broken_file_is_named_with_where_it_came_from(tmp_path: Path) -> None:
    path = bench_file(tmp_path, BENCH_FILE + "serverr = 1\n")
    with pytest.raises(SettingsError, match=r"^VDNO_BENCH_CONFIG .*: unknown keys serverr$"):
        BenchSettings.load(None, NO_FLAGS, environ={"VDNO_BENCH_CONFIG": str(path)})
    path = bench_file(tmp_path, "[bench\n")
    with pytest.raises(SettingsError, match=r"^--config .* is not valid TOML: "):
        BenchSettings.load(path, NO_FLAGS, environ={})
