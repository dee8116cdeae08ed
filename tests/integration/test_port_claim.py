"""One vdno-server per port: a second server started on a port that a server holds (with one process or
two, on the same database) exits at once with code 2 naming the port, and a port that another program
holds is refused too; the worker processes of one server share its port and its connections."""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from harness import ServerProcess
from integration_testlib import BIN, Deployment

from scripts.lab_service import free_port
from vdno.server.port_claim import PortClaim, PortHeld
from vdno.v1 import custodian_pb2, custodian_pb2_grpc

REFUSED_WITHIN = 30.0  # seconds: the refusal comes before migrations (a wait of up to 120 s), the HSM or the
# workers; the bound is loose because a busy 2-core machine takes seconds to start a Python process


@contextlib.contextmanager
def serving(deployment: Deployment, port: int, processes: int) -> Iterator[ServerProcess]:
    """Another `vdno-server serve` of the deployment (same state folder, same database) on `port`."""
    env = {**deployment.server_env, "VDNO_LISTEN": f"127.0.0.1:{port}", "VDNO_PROCESSES": str(processes)}
    server = ServerProcess(deployment.state, extra_env=env)
    server.log_path = deployment.state / f"port-{port}-{processes}.log"
    try:
        server.start()
        yield server
    finally:
        server.stop()


def serve_once(deployment: Deployment, port: int, processes: int) -> tuple[int, str, float]:
    """Run `vdno-server serve` on `port` until it exits (it must): exit code, stderr, seconds taken."""
    env = {
        **os.environ,
        **deployment.server_env,
        "VDNO_LISTEN": f"127.0.0.1:{port}",
        "VDNO_PROCESSES": str(processes),
    }
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "vdno-server"), "serve", "--config", str(deployment.state / "config.toml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def answers(server: ServerProcess) -> bool:
    with server.channel() as channel:
        stub = custodian_pb2_grpc.BenchServiceStub(channel)  # type: ignore[no-untyped-call]
        return bool(stub.GetTrustBundle(custodian_pb2.GetTrustBundleRequest(), timeout=10).generations)


def refused_both_ways(deployment: Deployment, port: int) -> list[tuple[int, str, float]]:
    """A second server on `port`, with one process and with two, started at once; how each ended."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda processes: serve_once(deployment, port, processes), (1, 2)))


def test_a_second_server_on_a_held_port_is_refused_at_once(deployment: Deployment) -> None:
    port = free_port()
    with serving(deployment, port, 1) as holder:
        for code, stderr, took in refused_both_ways(deployment, port):
            assert code == 2, stderr
            assert f"vdno-server: port {port} is already held by another vdno-server" in stderr
            assert took < REFUSED_WITHIN
        assert answers(holder)  # the holder never noticed
        with pytest.raises(PortHeld):
            PortClaim(port)
    PortClaim(port).close()  # the kernel let go of the claim with the holder


def test_a_port_another_program_holds_is_refused(deployment: Deployment) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for processes in (1, 2):
            code, stderr, _ = serve_once(deployment, port, processes)
            assert code == 2, stderr
            assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in stderr


def sockets_on_port(pids: list[int], port: int) -> dict[int, collections.Counter[str]]:
    """Per process: how many of its TCP sockets have local port `port`, by state (LISTEN, ESTABLISHED)."""
    states = {"0A": "LISTEN", "01": "ESTABLISHED"}
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in states:
                inodes[fields[9]] = states[fields[3]]
    found: dict[int, collections.Counter[str]] = {}
    for pid in pids:
        found[pid] = collections.Counter()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found[pid][inodes[target[8:-1]]] += 1
    return found


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def test_the_worker_processes_of_one_server_share_its_port_and_nobody_else(deployment: Deployment) -> None:
    port = free_port()
    with serving(deployment, port, 2) as server:
        assert server.proc is not None
        parent = server.proc.pid
        processes = [*children(parent), parent]
        deadline = time.monotonic() + 30
        while sum(1 for c in sockets_on_port(processes, port).values() if c["LISTEN"]) < 2:
            assert time.monotonic() < deadline, "the second worker never listened on the port"
            time.sleep(0.1)
        credentials = grpc.ssl_channel_credentials(
            deployment.tls_ca.read_bytes(),
            deployment.bench_key("bench-01").read_bytes(),
            deployment.bench_cert("bench-01").read_bytes(),
        )
        options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.use_local_subchannel_pool", 1)]
        # Each channel its own connection: the kernel spreads connections over the listening sockets.
        channels = [grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) for _ in range(16)]
        try:
            for channel in channels:
                stub = custodian_pb2_grpc.BenchServiceStub(channel)  # type: ignore[no-untyped-call]
                stub.GetTrustBundle(custodian_pb2.GetTrustBundleRequest(), timeout=10)
            found = sockets_on_port(processes, port)
        finally:
            for channel in channels:
                channel.close()
        for code, stderr, took in refused_both_ways(deployment, port):
            assert code == 2, stderr
            assert f"vdno-server: port {port} is already held by another vdno-server" in stderr
            assert took < REFUSED_WITHIN
        assert answers(server)
    PortClaim(port).close()
    workers = {pid: counts for pid, counts in found.items() if counts["LISTEN"]}
    assert len(workers) == 2, found  # two processes listen on the port; the parent holds none of it
    assert found[parent] == collections.Counter()
    # 16 connections, each worker took some (all on one: a chance of 1 in 2**15).
    assert all(counts["ESTABLISHED"] >= 1 for counts in workers.values()), workers
    assert sum(counts["ESTABLISHED"] for counts in workers.values()) == 16
