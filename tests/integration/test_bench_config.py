"""The settings files `vdno-server init` writes for benches and officers are complete (server, server name,
TLS files that parse and match; a bench's device transport and DCC gateway when init is given them), and
a bench that has one needs no flag at all: VDNO_BENCH_CONFIG names the file, the environment overrides
the address of a server started elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Iterator

import pytest
from integration_testlib import BIN, PYTHON, Deployment

from scripts.lab_tray import vanilla_tray_profiles
from vdno.client.settings import BenchSettings
from vdno.simulator.lab import write_tray


@pytest.fixture(scope="module")
def simulator(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, bytes]]:
    """`vdno-sim serve` holding one fresh vanilla meter: (port, device id)."""
    folder = tmp_path_factory.mktemp("profiles")
    [profile] = vanilla_tray_profiles(deployment.state, 1, first=9101)
    write_tray([profile], folder)
    proc = subprocess.Popen(
        [str(BIN / "vdno-sim"), "serve", "--profiles", str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("vdno-sim listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1]), profile.device_id
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_init_writes_a_complete_settings_file_for_each_bench_and_officer(deployment: Deployment) -> None:
    clients = deployment.state / "clients"
    bench = BenchSettings.load(clients / "bench-01.toml", {}, environ={})
    assert (bench.server, bench.server_name) == ("127.0.0.1:50051", "localhost")
    tls = bench.load_tls()  # readable, parse, and the key is the certificate's
    assert tls.cert.resolve() == deployment.bench_cert("bench-01")
    text = (clients / "bench-01.toml").read_text()
    assert '# sim = "127.0.0.1:PORT"' in text and '# dcc = "http://127.0.0.1:PORT/duis"' in text
    officer = BenchSettings.load(clients / "officer-01.toml", {}, environ={}, section="admin")
    assert officer.load_tls().cert.resolve() == deployment.state / "tls" / "officer-01.pem"
    assert "sim" not in tomllib.loads((clients / "officer-01.toml").read_text())["admin"]


def test_init_names_a_new_benchs_device_transport_and_dcc_gateway(deployment: Deployment) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "vdno.server.main", "init", "--state", str(deployment.state), "--bench", "bench-07",
         "--sim", "127.0.0.1:7000", "--dcc", "http://127.0.0.1:8080/duis"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **deployment.server_env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    settings = BenchSettings.load(deployment.state / "clients" / "bench-07.toml", {}, environ={})
    assert (settings.sim, settings.dcc) == ("127.0.0.1:7000", "http://127.0.0.1:8080/duis")
    assert settings.load_tls().cert.resolve() == deployment.bench_cert("bench-07")


def test_a_hand_out_needs_no_flag_with_the_benchs_settings_file(
    deployment: Deployment, simulator: tuple[int, bytes]
) -> None:
    sim_port, device_id = simulator
    with deployment.dcc_server() as dcc_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDNO_")}
        env |= {
            "VDNO_BENCH_CONFIG": str(deployment.state / "clients" / "bench-01.toml"),
            "VDNO_SERVER": deployment.target,  # the file names the default port; this server has another
            "VDNO_SIM": f"127.0.0.1:{sim_port}",
            "VDNO_DCC": dcc_url,
        }
        done = subprocess.run(
            [str(BIN / "vdno-bench"), "hand-out", "--device", device_id.hex(), "--area", "12", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["meters"]
    assert (result["device"], result["area"], result["status"]) == (device_id.hex(), 12, "applied")
    assert done.stderr == ""
