"""A server pointed at a database that `vdno-server init` never ran against (a new PostgreSQL database, or
a replica that started before init finished) starts, and says so at once: a `database.empty` warning in
its JSON log. It serves as soon as init has run, without a
restart; until then calls are refused as the records say (PERMISSION_DENIED for an unknown bench)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from harness import ServerProcess, run_init
from integration_testlib import Deployment

from vdno.client.api import BenchClient
from vdno.client.errors import ServiceError


def test_an_empty_database_is_named_at_start_up_and_init_makes_it_serve(
    deployment: Deployment, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    server = ServerProcess(deployment.state, extra_env={"VDNO_DATABASE_URL": url})
    server.log_path = tmp_path / "server.log"
    port = server.start()
    try:
        events = [json.loads(line) for line in server.log_path.read_text().splitlines()]  # all JSON
        [warning] = [e for e in events if e["event"] == "database.empty"]
        assert warning["level"] == "warning" and warning["problem"] == (
            f"database {url} has no area, no vanilla generation, no bench and no officer: run "
            f"`vdno-server init --database-url {url}`; calls that need them are refused until then"
        )

        def bench() -> BenchClient:
            return BenchClient(
                f"127.0.0.1:{port}",
                deployment.tls_ca.read_bytes(),
                deployment.bench_cert("bench-01").read_bytes(),
                deployment.bench_key("bench-01").read_bytes(),
                server_name_override="localhost",
                attempts=1,
            )

        with bench() as api, pytest.raises(ServiceError) as refused:
            api.trust_bundle()
        assert refused.value.code_name == "PERMISSION_DENIED"

        run_init(deployment.state, database_url=url)
        deadline = time.monotonic() + 10  # reference data is re-read within a second
        while True:  # init registers the bench before its generation: wait for both
            try:
                with bench() as api:
                    if api.trust_bundle().generations:
                        break
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
            assert time.monotonic() < deadline, "the generation init made never reached the bundle"
            time.sleep(0.2)
        assert server.proc is not None and server.proc.poll() is None  # the same process
    finally:
        server.stop()
