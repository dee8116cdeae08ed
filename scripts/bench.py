"""`make bench`: raw HSM signing rate vs end-to-end hand-out issuance through the real server over mTLS.

Measured in one run on this machine (client and server share it):
  1. raw: one Pkcs11Signer session signing SHA-256 digests back to back with the vanilla key;
  2. baseline: a bare mTLS gRPC server (same TLS files, same token and key, same number of processes)
     that does one SoftHSM signature per call and nothing else, driven by the same client loop with
     requests of the same size; the yardstick for what this machine can do at all;
  3. end to end: `vdno-server serve` (subprocess(es), SQLite durable, group commit) answering
     RequestHandOut from 1 and from 8 concurrent benches, each call a new request id, so every call
     allocates a counter, records the issuance, signs in the HSM, verifies, stores, releases. Every call
     hands out a meter of its own (the service keeps one outstanding command per meter), from a pool of
     fresh meters read before the load starts.
Baseline and end to end take turns in short windows (--rounds), so both see the same machine.
Prints signed/s, p50/p99 latency, the ratios end-to-end / raw and end-to-end / baseline, and the share
of CPU time the hypervisor took away (steal) during each phase; writes them as JSON to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from scripts.lab_service import bench_channel, free_port, open_private_log, wait_until_serving  # noqa: E402
from vdno.v1 import custodian_pb2 as pb  # noqa: E402
from vdno.v1 import custodian_pb2_grpc as pb_grpc  # noqa: E402

BASELINE_METHOD = "/vdno.bench.Baseline/Sign"


def open_vanilla_signer(settings: Any) -> tuple[Any, str]:
    """(signer, key URI): the first vanilla DS key on a session used in the calling thread, as the server's
    issuance pipeline uses it. In a child process: SoftHSM reads its config once per process."""
    from vdno.server.app import open_signer
    from vdno.server.store.sql import open_store

    store = open_store(settings.database_url)
    try:
        key = store.list_generations()[0].ds_key_uri
    finally:
        store.close()
    return open_signer(settings), key


def sign_back_to_back(state: Path, seconds: float) -> float:
    """Signs per second of one session signing one digest over and over (after a warm-up)."""
    from vdno.server.config import load_settings

    signer, key = open_vanilla_signer(load_settings(state / "config.toml"))
    digest = hashlib.sha256(b"bench").digest()
    try:
        for _ in range(50):
            signer.sign_digest(key, digest)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            signer.sign_digest(key, digest)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        signer.close()


def measure_raw_hsm(state: Path, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--state", str(state), "--raw-hsm", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


Reading = tuple[str, bytes, bytes]  # device id, device DS certificate, signed CS02a response


class Readings:
    """Readings of fresh simulated vanilla meters (new device ids on every run: the state folder's database
    outlives a run), read the way a bench reads them (client.handout.read_meter). `take()` hands each out
    once, to whichever bench thread asks; thread-safe."""

    def __init__(self, state: Path, count: int) -> None:
        from scripts.lab_tray import InProcessTransport, vanilla_tray_profiles
        from vdno.client.handout import read_meter

        first = int(time.time()) * count % (2**32 - 2 * count) + 1
        transport = InProcessTransport(vanilla_tray_profiles(state, count, first, require_acb_mac=False))
        self._items: list[Reading] = []
        for device_id in transport.list_devices():
            reading = read_meter(transport, device_id)
            device = device_id.hex().upper()
            self._items.append((device, reading.device_certificate, reading.credentials_response))
        self._next = itertools.count()

    def take(self) -> Reading:
        """A meter no call has had yet."""
        index = next(self._next)
        if index >= len(self._items):
            raise RuntimeError(f"all {len(self._items):,} fresh meters are used: run with fewer --seconds")
        return self._items[index]


def cpu_steal_share() -> Callable[[], float | None]:
    """Start counting; the returned function gives the share of all CPU time the hypervisor stole since
    (the `steal` column of /proc/stat), or None where the kernel does not report it."""

    def read() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None

    before = read()

    def since() -> float | None:
        after = read()
        if before is None or after is None or after[1] == before[1]:
            return None
        return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)

    return since


Call = Callable[[grpc.Channel], Callable[[int], object]]


def hand_out_request(reading: Reading, i: int) -> pb.HandOutRequest:
    """A bench's i-th request: a new request id, so every call is a new issuance."""
    device, cert, credentials = reading
    return pb.HandOutRequest(
        request_id=uuid.uuid4().hex,
        device_id=device,
        area_id=10 + (i % 14),
        device_certificate=cert,
        credentials_response=credentials,
    )


def hand_out_call(readings: Readings) -> Call:
    """RequestHandOut, each call for a meter of its own."""

    def bind(channel: grpc.Channel) -> Callable[[int], object]:
        stub = pb_grpc.BenchServiceStub(channel)
        stub.GetTrustBundle(pb.GetTrustBundleRequest())  # handshake outside the timed loop
        return lambda i: stub.RequestHandOut(hand_out_request(readings.take(), i), timeout=10)

    return bind


def baseline_call(reading: Reading) -> Call:
    """The bare server's one method, sent the same bytes a hand-out request would carry."""

    def bind(channel: grpc.Channel) -> Callable[[int], object]:
        sign = channel.unary_unary(BASELINE_METHOD)
        sign(b"handshake", timeout=10)
        return lambda i: sign(hand_out_request(reading, i).SerializeToString(), timeout=10)

    return bind


@dataclass
class Window:
    """One timed window of load: every call's latency, the errors, and the CPU steal share."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steal_percent: float | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def run_load(
    port: int, state: Path, benches: int, seconds: float, make_call: Callable[[int], Call]
) -> Window:
    window = Window(seconds)
    lock = threading.Lock()
    stop_at = [0.0]  # set once every bench has its channel up, so the window is all hand-outs
    steal: list[Callable[[], float | None]] = []

    def start_window() -> None:
        stop_at[0] = time.perf_counter() + seconds
        steal.append(cpu_steal_share())

    barrier = threading.Barrier(benches, action=start_window)

    def bench(index: int) -> None:
        try:
            run_bench(index)
        except Exception as exc:  # reported, never silently dropped
            with lock:
                window.errors.append(f"bench {index + 1}: {exc!r:.200}")
            barrier.abort()

    def run_bench(index: int) -> None:
        with bench_channel(state, port, f"bench-{index + 1:02d}") as channel:
            call = make_call(index)(channel)
            mine: list[float] = []
            i = 0
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            while time.perf_counter() < stop_at[0]:
                i += 1
                t0 = time.perf_counter()
                try:
                    call(i)
                except grpc.RpcError as exc:
                    with lock:
                        window.errors.append(f"{exc.code().name}: {exc.details()}")
                    continue
                mine.append(time.perf_counter() - t0)
            with lock:
                window.latencies.extend(mine)

    threads = [threading.Thread(target=bench, args=(i,)) for i in range(benches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window.steal_percent = steal[0]() if steal else None
    return window


def summarise(benches: int, windows: list[Window]) -> dict:
    """All windows of one kind together: rate over their total time, latency quantiles over all calls."""
    latencies = sorted(x for w in windows for x in w.latencies)
    errors = [e for w in windows for e in w.errors]
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    steals = [w.steal_percent for w in windows if w.steal_percent is not None]
    return {
        "benches": benches,
        "signed": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "signed_per_s": round(len(latencies) / sum(w.seconds for w in windows), 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "cpu_steal_percent": round(statistics.mean(steals), 1) if steals else None,
    }


def serve_baseline(state: Path, port: int) -> None:
    """The bare server (one process): mTLS, one SoftHSM signature of the request's SHA-256 per call."""
    from concurrent import futures

    from vdno.server.app import mtls_credentials
    from vdno.server.config import load_settings

    settings = load_settings(state / "config.toml")
    signer, key = open_vanilla_signer(settings)
    signer.sign_digest(key, hashlib.sha256(b"warm up").digest())

    def sign(request: bytes, context: grpc.ServicerContext) -> bytes:
        return signer.sign_digest(key, hashlib.sha256(request).digest())

    handler = grpc.method_handlers_generic_handler(
        BASELINE_METHOD.split("/")[1], {"Sign": grpc.unary_unary_rpc_method_handler(sign)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(settings.threads))
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(f"127.0.0.1:{port}", mtls_credentials(settings.tls))
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def start_baseline(state: Path, processes: int) -> tuple[int, list[subprocess.Popen[str]]]:
    """The bare server in `processes` processes on one port (gRPC sets SO_REUSEPORT)."""
    port = free_port()
    servers = [
        subprocess.Popen(
            [sys.executable, __file__, "--state", str(state), "--serve-baseline", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for server in servers:
        if server.stdout is None or server.stdout.readline().strip() != "serving":
            stop(servers)
            raise RuntimeError("the baseline server did not start")
    return port, servers


def stop(processes: list[subprocess.Popen[str]] | list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", type=Path, default=ROOT / "state-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--processes", type=int, default=2, help="server processes sharing the port")
    parser.add_argument("--rounds", type=int, default=4, help="baseline / end-to-end turns per bench count")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--raw-hsm", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    state = args.state.resolve()
    if args.serve_baseline is not None:
        serve_baseline(state, args.serve_baseline)
        return 0
    if args.raw_hsm is not None:
        print(sign_back_to_back(state, args.raw_hsm))
        return 0
    benches = tuple(f"bench-{i:02d}" for i in range(1, 9))
    lab = [sys.executable, "-m", "vdno.labdcc", "init", "--state", str(state)]
    subprocess.run(lab, check=True, stdout=subprocess.DEVNULL)
    init = [sys.executable, "-m", "vdno.server.main", "init", "--state", str(state)]
    for b in benches:
        init += ["--bench", b]
    subprocess.run(init, check=True, stdout=subprocess.DEVNULL)

    raw = measure_raw_hsm(state, args.seconds / 2)
    print(f"raw HSM (one session, CKM_ECDSA P-256): {raw:,.0f} signs/s")
    # Enough meters for every end-to-end call at 1,000 signed/s on average over both bench counts (the
    # first error names the pool running dry).
    meters = int(1_000 * args.seconds * 2)
    readings = Readings(state, meters)
    print(f"read {meters:,} fresh meters")

    port = free_port()
    env = dict(os.environ, VDNO_LISTEN=f"127.0.0.1:{port}", VDNO_PROCESSES=str(args.processes))
    log = open_private_log(state / "bench-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vdno.server.main", "serve", "--config", str(state / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )
    servers: list[subprocess.Popen[bytes]] = [server]
    baselines: list[subprocess.Popen[str]] = []
    results: list[dict] = []
    baseline: list[dict] = []
    try:
        wait_until_serving(state, port, server.poll, timeout=90)
        baseline_port, baselines = start_baseline(state, args.processes)
        time.sleep(1.0)  # SERVING came from one worker process; let the others finish starting
        window = args.seconds / args.rounds
        sample = readings.take()  # the baseline's requests: the same size as a hand-out's
        for n in (1, 8):
            # This machine's CPU is shared (the hypervisor's steal comes and goes): baseline and end to end
            # take turns in short windows, so both see the same conditions; the ratio is the median of
            # the rounds' ratios.
            pairs = [
                (
                    run_load(baseline_port, state, n, window, lambda i: baseline_call(sample)),
                    run_load(port, state, n, window, lambda i: hand_out_call(readings)),
                )
                for _ in range(args.rounds)
            ]
            base = summarise(n, [b for b, _ in pairs])
            r = summarise(n, [e for _, e in pairs])
            r["ratio_to_raw_hsm"] = round(r["signed_per_s"] / raw, 3)
            r["ratio_to_baseline"] = round(statistics.median(e.rate / b.rate for b, e in pairs if b.rate), 3)
            baseline.append(base)
            results.append(r)
            print(
                f"baseline (bare mTLS gRPC + one SoftHSM signature), {n} client(s): "
                f"{base['signed_per_s']:,.0f} calls/s, p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms, "
                f"CPU steal {base['cpu_steal_percent']}%, errors {base['errors']}"
            )
            print(
                f"end to end, {n} bench(es): {r['signed_per_s']:,.0f} signed/s, p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms, ratio to raw HSM {r['ratio_to_raw_hsm']:.2f}, "
                f"ratio to baseline {r['ratio_to_baseline']:.2f}, CPU steal {r['cpu_steal_percent']}%, "
                f"errors {r['errors']}" + (f" (first: {r['first_error']})" if r["first_error"] else "")
            )
    finally:
        stop(baselines)
        stop(servers)
    report = {
        "raw_hsm_signs_per_s": round(raw, 1),
        "server_processes": args.processes,
        "rounds": args.rounds,
        "baseline": [
            {k: b[k] for k in ("p50_ms", "p99_ms", "errors", "cpu_steal_percent")}
            | {"clients": b["benches"], "calls_per_s": b["signed_per_s"]}
            for b in baseline
        ],
        "end_to_end": [
            {
                k: r[k]
                for k in (
                    "benches",
                    "signed_per_s",
                    "p50_ms",
                    "p99_ms",
                    "signed",
                    "errors",
                    "ratio_to_raw_hsm",
                    "ratio_to_baseline",
                    "cpu_steal_percent",
                )
            }
            for r in results
        ],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if results and all(r["errors"] == 0 for r in results + baseline) else 1


if __name__ == "__main__":
    sys.exit(main())
