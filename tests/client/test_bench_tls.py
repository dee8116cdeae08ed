"""TLS mistakes at a bench or an officer's desk: each file wrong in turn (unreadable, not PEM, a key that
is not the certificate's, a CA that does not issue the server's certificate, a client certificate the
server's client CA did not issue, a server name the certificate does not hold, a port that is not TLS).
`vdno-bench` and `vdno-admin` name the file or the side at fault in one line and exit 2 at once, before
any call and its retries, with none of gRPC core's own log lines on stderr.

The server is a real gRPC server on 127.0.0.1:0 requiring client certificates from its CA (health service
only: what is tested is the client's side of the handshake)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from vdno.client.settings import BenchSettings, SettingsError
from vdno.client.tls import TlsSetupError, check_handshake
from vdno.labpki.smki import new_p256_key
from vdno.labpki.store import write_certified_key, write_private_key
from vdno.labpki.tls import (
    BENCH_ROLE,
    OFFICER_ROLE,
    issue_client_certificate,
    issue_server_certificate,
    make_tls_ca,
)

BIN = Path(sys.executable).parent
DEVICE = "00db1234567890a0"
WITHIN = 1.0  # seconds for the checks; before them, the call's retries took 4 s to report a bad CA
# A whole CLI run, interpreter start included, on a shared machine: still less than a call's deadline
# (30 s) with retries. The checks' own time is measured in-process (WITHIN).
CLI_WITHIN = 10.0
GRPC_NOISE = ("ssl_transport_security", "Handshake failed", "E0000", "absl::InitializeLog", "Traceback")


@dataclass(frozen=True)
class Lab:
    folder: Path
    tls_port: int
    plain_port: int

    def path(self, name: str) -> Path:
        return self.folder / name


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("tls")
    ca, other_ca = make_tls_ca(), make_tls_ca("ANOTHER-TLS-CA")
    write_certified_key(folder, "ca", ca)
    write_certified_key(folder, "other-ca", other_ca)
    write_certified_key(folder, "server", issue_server_certificate(ca))
    write_certified_key(folder, "bench", issue_client_certificate(ca, "bench-01", role=BENCH_ROLE))
    write_certified_key(folder, "officer", issue_client_certificate(ca, "officer-01", role=OFFICER_ROLE))
    write_certified_key(folder, "stranger", issue_client_certificate(other_ca, "bench-01", role=BENCH_ROLE))
    write_private_key(folder / "other.key", new_p256_key())
    (folder / "garbage.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    (folder / "empty.pem").write_bytes(b"")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [((folder / "server.key").read_bytes(), (folder / "server.pem").read_bytes())],
        root_certificates=(folder / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Lab(folder, tls_port, plain_port)
    finally:
        server.stop(None)


def run(program: str, args: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / program), *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    return done, time.monotonic() - started


def hand_out(lab: Lab, ca: str, cert: str, key: str, port: int = 0, name: str = "localhost") -> list[str]:
    return [
        "hand-out",
        "--device", DEVICE,
        "--area", "10",
        "--sim", "127.0.0.1:9",
        "--server", f"127.0.0.1:{port or lab.tls_port}",
        "--server-name", name,
        "--ca", str(lab.path(ca)),
        "--cert", str(lab.path(cert)),
        "--key", str(lab.path(key)),
    ]  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], took: float, line: str) -> None:
    assert done.returncode == 2, done.stderr
    assert took < CLI_WITHIN, took
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(line), done.stderr
    assert not any(noise in done.stderr for noise in GRPC_NOISE)


# (CA, certificate, key, the line that names the mistake; {d} is the folder, {port} the server's)
FILE_MISTAKES = [
    ("missing.pem", "bench.pem", "bench.key", "cannot read --ca {d}/missing.pem: No such file or directory"),
    ("garbage.pem", "bench.pem", "bench.key", "--ca {d}/garbage.pem holds no PEM certificate"),
    ("ca.pem", "empty.pem", "bench.key", "--cert {d}/empty.pem holds no PEM certificate"),
    ("ca.pem", "bench.pem", "missing.key", "cannot read --key {d}/missing.key: No such file or directory"),
    ("ca.pem", "bench.pem", "bench.pem", "--key {d}/bench.pem holds no PEM private key"),
    ("ca.pem", "bench.pem", "other.key", "--key {d}/other.key is not the key of --cert {d}/bench.pem"),
    ("ca.pem", "bench.key", "bench.key", "--cert {d}/bench.key holds no PEM certificate"),
    ("other-ca.pem", "bench.pem", "bench.key",
     "the server certificate at 127.0.0.1:{port} is not trusted by --ca {d}/other-ca.pem: unable to get "
     "local issuer certificate"),
    ("ca.pem", "stranger.pem", "stranger.key",
     "the server at 127.0.0.1:{port} refused the client certificate --cert {d}/stranger.pem ("),
]  # fmt: skip


# Through the CLI (a couple of seconds each on a busy machine), each of the three files wrong in two ways:
# unreadable or not PEM, and unusable with the other files or with the server.
THROUGH_THE_CLI = [FILE_MISTAKES[i] for i in (0, 7, 2, 8, 4, 5)]


@pytest.mark.parametrize(("ca", "cert", "key", "line"), THROUGH_THE_CLI)
def test_the_bench_names_the_tls_file_at_fault(lab: Lab, ca: str, cert: str, key: str, line: str) -> None:
    done, took = run("vdno-bench", hand_out(lab, ca, cert, key))
    assert_one_line(done, took, "vdno-bench: " + line.format(d=lab.folder, port=lab.tls_port))


@pytest.mark.parametrize(("ca", "cert", "key", "line"), FILE_MISTAKES)
def test_the_checks_take_less_than_a_second(lab: Lab, ca: str, cert: str, key: str, line: str) -> None:
    """What the CLI runs before any call: the files, then the handshake."""
    settings = BenchSettings(
        f"127.0.0.1:{lab.tls_port}", lab.path(ca), lab.path(cert), lab.path(key), "localhost"
    )
    started = time.monotonic()
    with pytest.raises((SettingsError, TlsSetupError)) as caught:
        check_handshake(settings.load_tls(), *settings.server_address(), settings.server_name)
    assert time.monotonic() - started < WITHIN
    assert str(caught.value).startswith(line.format(d=lab.folder, port=lab.tls_port))


def test_the_bench_names_a_server_name_the_certificate_does_not_hold(lab: Lab) -> None:
    done, took = run(
        "vdno-bench", hand_out(lab, "ca.pem", "bench.pem", "bench.key", name="custodian.example")
    )
    assert_one_line(
        done,
        took,
        f"vdno-bench: the server certificate at 127.0.0.1:{lab.tls_port} does not name 'custodian.example' "
        "(Hostname mismatch, certificate is not valid for 'custodian.example'.): set server_name",
    )


def test_the_bench_names_a_port_that_does_not_speak_tls(lab: Lab) -> None:
    done, took = run("vdno-bench", hand_out(lab, "ca.pem", "bench.pem", "bench.key", port=lab.plain_port))
    assert_one_line(
        done,
        took,
        f"vdno-bench: 127.0.0.1:{lab.plain_port} does not speak TLS (is it the plaintext health port?)",
    )


def test_with_the_right_files_the_bench_gets_past_tls(lab: Lab) -> None:
    """The handshake succeeds, so the call is made: this server has no BenchService."""
    done, _ = run("vdno-bench", hand_out(lab, "ca.pem", "bench.pem", "bench.key"))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("vdno-bench: cannot fetch the trust bundle: UNIMPLEMENTED")
    assert not any(noise in done.stderr for noise in GRPC_NOISE)


@pytest.mark.parametrize(
    ("ca", "cert", "key", "line"),
    [
        (
            "other-ca.pem",
            "officer.pem",
            "officer.key",
            "the server certificate at 127.0.0.1:{port} is not trusted",
        ),
        (
            "ca.pem",
            "stranger.pem",
            "stranger.key",
            "the server at 127.0.0.1:{port} refused the client certificate",
        ),
    ],
)
def test_the_admin_tool_names_the_tls_file_at_fault(
    lab: Lab, ca: str, cert: str, key: str, line: str
) -> None:
    args = ["--server", f"127.0.0.1:{lab.tls_port}", "--server-name", "localhost"]
    args += ["--ca", str(lab.path(ca)), "--cert", str(lab.path(cert)), "--key", str(lab.path(key))]
    done, took = run("vdno-admin", [*args, "fleet", "summary"])
    assert_one_line(done, took, "vdno-admin: " + line.format(d=lab.folder, port=lab.tls_port))
