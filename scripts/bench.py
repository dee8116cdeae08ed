"""`make bench`: raw HSM signing rate vs end-to-end hand-out issuance through the real server over mTLS.

Measured in one run on this machine (client and server share it):
  1. raw: one Pkcs11Signer session signing SHA-256 digests back to back with the vanilla key;
  2. end to end: `vdno-server serve` (subprocess(es), SQLite durable, group commit) answering
     RequestHandOut from 1 and from 8 concurrent benches, each call a new request id, so every call
     allocates a counter, records the issuance, signs in the HSM, verifies, stores, releases.
Prints signed/s, p50/p99 latency and the ratio end-to-end / raw; writes them as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from scripts.lab_service import bench_channel, wait_until_serving  # noqa: E402
from vdno.v1 import custodian_pb2 as pb  # noqa: E402
from vdno.v1 import custodian_pb2_grpc as pb_grpc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_raw_hsm(state: Path, seconds: float) -> float:
    """In a child process: SoftHSM reads its config once per process."""
    code = f"""
import hashlib, os, time, sys
sys.path.insert(0, {str(ROOT)!r})
from server.config import load_settings
from server.app import open_signer
from server.store.sql import open_store
settings = load_settings(__import__('pathlib').Path({str(state / "config.toml")!r}))
store = open_store(settings.database_url)
uri = store.list_generations()[0].ds_key_uri
store.close()
signer = open_signer(settings, worker_thread=False)  # as the server's pipeline owns it
digest = hashlib.sha256(b"bench").digest()
for _ in range(50):
    signer.sign_digest(uri, digest)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    signer.sign_digest(uri, digest); n += 1
print(n / (time.perf_counter() - start))
signer.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def make_readings(state: Path, count: int) -> list[tuple[str, bytes, bytes]]:
    """(device id, device DS certificate, signed CS02a response) for `count` simulated vanilla meters,
    read the way a bench reads them (client.handout.read_meter)."""
    from client.handout import read_meter
    from scripts.lab_tray import InProcessTransport, vanilla_tray_profiles

    transport = InProcessTransport(vanilla_tray_profiles(state, count))
    readings = []
    for device_id in transport.list_devices():
        reading = read_meter(transport, device_id)
        readings.append((device_id.hex().upper(), reading.device_certificate, reading.credentials_response))
    return readings


def run_load(
    port: int, state: Path, benches: int, seconds: float, readings: list[tuple[str, bytes, bytes]]
) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = [0.0]  # set once every bench has its channel up, so the window is all hand-outs

    def start_window() -> None:
        stop_at[0] = time.perf_counter() + seconds

    barrier = threading.Barrier(benches, action=start_window)

    def bench(index: int) -> None:
        try:
            run_bench(index)
        except Exception as exc:  # reported, never silently dropped
            with lock:
                errors.append(f"bench {index + 1}: {exc!r:.200}")
            barrier.abort()

    def run_bench(index: int) -> None:
        with bench_channel(state, port, f"bench-{index + 1:02d}") as channel:
            stub = pb_grpc.BenchServiceStub(channel)
            stub.GetTrustBundle(pb.GetTrustBundleRequest())  # handshake outside the timed loop
            mine: list[float] = []
            i = 0
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            while time.perf_counter() < stop_at[0]:
                device, cert, reading = readings[(index * 7919 + i) % len(readings)]
                i += 1
                request = pb.HandOutRequest(
                    request_id=uuid.uuid4().hex,
                    device_id=device,
                    area_id=10 + (i % 14),
                    device_certificate=cert,
                    credentials_response=reading,
                )
                t0 = time.perf_counter()
                try:
                    stub.RequestHandOut(request, timeout=10)
                except grpc.RpcError as exc:
                    with lock:
                        errors.append(f"{exc.code().name}: {exc.details()}")
                    continue
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=bench, args=(i,)) for i in range(benches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {
        "benches": benches,
        "signed": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "signed_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", type=Path, default=ROOT / "state-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--processes", type=int, default=2, help="server processes sharing the port")
    args = parser.parse_args()
    state = args.state.resolve()
    benches = tuple(f"bench-{i:02d}" for i in range(1, 9))
    init = [sys.executable, "-m", "server.main", "init", "--state", str(state)]
    for b in benches:
        init += ["--bench", b]
    subprocess.run(init, check=True, stdout=subprocess.DEVNULL)

    raw = measure_raw_hsm(state, args.seconds / 2)
    print(f"raw HSM (one session, CKM_ECDSA P-256): {raw:,.0f} signs/s")
    readings = make_readings(state, 64)

    port = free_port()
    env = dict(os.environ, VDNO_LISTEN=f"127.0.0.1:{port}", VDNO_PROCESSES=str(args.processes))
    log = (state / "bench-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "server.main", "serve", "--config", str(state / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )
    try:
        wait_until_serving(state, port, server.poll, timeout=90)
        time.sleep(1.0)  # SERVING came from one worker process; let the others finish starting
        results = []
        for n in (1, 8):
            r = run_load(port, state, n, args.seconds, readings)
            results.append(r)
            print(
                f"end to end, {n} bench(es): {r['signed_per_s']:,.0f} signed/s, p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms, ratio to raw HSM {r['signed_per_s'] / raw:.2f}, errors {r['errors']}"
                + (f" (first: {r['first_error']})" if r["first_error"] else "")
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "raw_hsm_signs_per_s": round(raw, 1),
        "server_processes": args.processes,
        "end_to_end": [
            {k: r[k] for k in ("benches", "signed_per_s", "p50_ms", "p99_ms", "signed", "errors")}
            | {"ratio_to_raw_hsm": round(r["signed_per_s"] / raw, 3)}
            for r in results
        ],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
