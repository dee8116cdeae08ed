"""Runs the real service: `vdno-server init` then `vdno-server serve` as subprocesses (the same entry points
and build_server function as production), mTLS on 127.0.0.1 with a free port."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import grpc

from scripts.lab_service import bench_channel, open_private_log, wait_until_serving
from vdno.v1 import custodian_pb2 as pb

PYTHON = sys.executable


def run_init(state: Path, benches: tuple[str, ...] = ("bench-01",), database_url: str | None = None) -> str:
    """database_url: seed that database (e.g. PostgreSQL) instead of state/vdno.db; start the server with
    extra_env={"VDNO_DATABASE_URL": database_url} to use it."""
    lab = [PYTHON, "-m", "vdno.labdcc", "init", "--state", str(state)]  # the lab's DNOs and ACB
    done = subprocess.run(lab, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vdno-labdcc init failed: {done.stderr[-2000:]}")
    args = [PYTHON, "-m", "vdno.server.main", "init", "--state", str(state)]
    for bench in benches:
        args += ["--bench", bench]
    if database_url is not None:
        args += ["--database-url", database_url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vdno-server init failed: {done.stderr[-2000:]}")
    return done.stdout


class ServerProcess:
    """`vdno-server serve` (or `launcher`, a command line that runs server.main's app the same way) on
    the state folder's config; `port` is the mTLS port, `health_port` the plaintext health listener's,
    `metrics_port` the metrics listener's (0 when VDNO_METRICS_LISTEN="" disables it)."""

    def __init__(
        self, state: Path, extra_env: dict[str, str] | None = None, launcher: list[str] | None = None
    ) -> None:
        self.state = state
        self.extra_env = extra_env or {}
        self.launcher = launcher or [PYTHON, "-m", "vdno.server.main"]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.health_port = 0
        self.metrics_port = 0
        self.log_path = state / "server.log"

    def start(self, timeout: float = 60.0, wait_serving: bool = True) -> int:
        """Start, read the printed ports, then (wait_serving) wait until health says SERVING."""
        env = dict(os.environ)
        env.update(self.extra_env)
        env.setdefault("VDNO_LISTEN", "127.0.0.1:0")
        with open_private_log(self.log_path) as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*self.launcher, "serve", "--config", str(self.state / "config.toml")],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        deadline = time.monotonic() + timeout
        self.port = self.health_port = self.metrics_port = 0
        expect_health = env.get("VDNO_HEALTH_LISTEN", "x") != ""
        expect_metrics = env.get("VDNO_METRICS_LISTEN", "x") != ""
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=_read_lines, args=(self.proc.stdout, lines), daemon=True).start()
        while (
            not self.port
            or (expect_health and not self.health_port)
            or (expect_metrics and not self.metrics_port)
        ):
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = ""
            if "listening on port" in line:
                self.port = int(line.rsplit(" ", 1)[1])
            elif "health on port" in line:
                self.health_port = int(line.rsplit(" ", 1)[1])
            elif "metrics on port" in line:
                self.metrics_port = int(line.rsplit(" ", 1)[1])
            else:
                self.proc.kill()
                log = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"server did not start: {line!r}; log: {log}")
        if wait_serving:
            wait_until_serving(self.state, self.port, self.proc.poll, max(deadline - time.monotonic(), 1.0))
        return self.port

    def channel(
        self, bench: str = "bench-01", client_cert: tuple[bytes, bytes] | None = None
    ) -> grpc.Channel:
        return bench_channel(self.state, self.port, bench, client_cert)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _read_lines(stream: IO[str] | None, into: queue.SimpleQueue[str]) -> None:
    """Every line the server prints, until it exits ("" at the end)."""
    assert stream is not None
    for line in stream:
        into.put(line)
    into.put("")


__all__ = ["ServerProcess", "pb", "run_init"]
