"""Runs the real service: `vdno-server init` then `vdno-server serve` as subprocesses (the same entry points
and build_server function as production), mTLS on 127.0.0.1 with a free port."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import grpc

from scripts.lab_service import bench_channel, wait_until_serving
from vdno.v1 import custodian_pb2 as pb

PYTHON = sys.executable


def run_init(state: Path, benches: tuple[str, ...] = ("bench-01",), database_url: str | None = None) -> str:
    """database_url: seed that database (e.g. PostgreSQL) instead of state/vdno.db; start the server with
    extra_env={"VDNO_DATABASE_URL": database_url} to use it."""
    lab = [PYTHON, "-m", "labdcc", "init", "--state", str(state)]  # the lab's DNOs and ACB
    done = subprocess.run(lab, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vdno-labdcc init failed: {done.stderr[-2000:]}")
    args = [PYTHON, "-m", "server.main", "init", "--state", str(state)]
    for bench in benches:
        args += ["--bench", bench]
    if database_url is not None:
        args += ["--database-url", database_url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vdno-server init failed: {done.stderr[-2000:]}")
    return done.stdout


class ServerProcess:
    def __init__(self, state: Path, extra_env: dict[str, str] | None = None) -> None:
        self.state = state
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log_path = state / "server.log"

    def start(self, timeout: float = 60.0) -> int:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.setdefault("VDNO_LISTEN", "127.0.0.1:0")
        with self.log_path.open("a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "server.main", "serve", "--config", str(self.state / "config.toml")],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)  # the bound port, or give up
        line = self.proc.stdout.readline() if ready else ""
        if "listening on port" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}; log: {self.log_path.read_text()[-3000:]}")
        self.port = int(line.rsplit(" ", 1)[1])
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


__all__ = ["ServerProcess", "pb", "run_init"]
