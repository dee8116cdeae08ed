"""`make demo`: bootstrap a state folder, start the custodian and a simulated tray of 20 vanilla meters,
hand every meter out to a DNO area, check the result, stop everything.

Steps:
  1. `vdno-server init --state STATE` (idempotent: a re-run changes nothing and says so);
  2. a fresh tray of 20 vanilla meters in STATE/tray/ (new device keys each run: meters handed out in an
     earlier run no longer hold vanilla credentials) and STATE/tray.txt giving each an area 10-23 in turn;
  3. every party's certificate in STATE/keystore/ in the RTDS keystore naming (<eui>-ds.pem / -ka.pem,
     with .key where the lab holds the key): vanilla, the 14 area DNOs, the 20 devices, plus the lab CAs;
  4. `vdno-server serve` (log in STATE/server.log) and `vdno-sim serve` (log in STATE/sim.log);
  5. `vdno-bench hand-out --tray STATE/tray.txt --save-commands STATE/commands` (prints the summary),
     `vdno-bench inspect` on a saved command, `vdno-server verify-audit`;
  6. stops both processes. Exit 0 only when every meter was applied and every check passed.
MAC checking is off on the simulated meters: the lab has no DCC ACB.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METERS = 20
AREAS = tuple(range(10, 24))  # the 14 DNO areas
BENCH = "bench-01"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
PY = sys.executable


class DemoFailed(Exception):
    """A step failed; the message says which and why."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n== {text}")


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(args: Sequence[str], what: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), cwd=ROOT, text=True, capture_output=capture, check=False)
    if done.returncode != 0:
        detail = f": {(done.stderr or done.stdout).strip()[-2000:]}" if capture else ""
        raise DemoFailed(f"{what} exited with {done.returncode}{detail}")
    return done


# --- 1-3: state, tray, keystore --------------------------------------------------------------------


def build_tray(state: Path) -> list[tuple[bytes, int]]:
    """Fresh vanilla meters in STATE/tray/, their areas in STATE/tray.txt, their certificates in the
    keystore. Returns (device id, area) per meter."""
    from cryptography import x509

    from labpki.smki import CertifiedKey
    from labpki.store import export_keystore
    from scripts.lab_tray import vanilla_tray_profiles
    from simulator.lab import write_tray

    profiles = vanilla_tray_profiles(state, METERS)
    tray_dir = state / "tray"
    if tray_dir.exists():
        for old in tray_dir.glob("*.json"):
            old.unlink()
    write_tray(profiles, tray_dir)

    assignments = [(p.device_id, AREAS[i % len(AREAS)]) for i, p in enumerate(profiles)]
    lines = ["# device area  (written by scripts/demo.py; vdno-bench hand-out --tray)"]
    lines += [f"{device.hex()} {area}" for device, area in assignments]
    (state / "tray.txt").write_text("\n".join(lines) + "\n")

    device_credentials = []
    for p in profiles:
        for key in (p.device_ds, p.device_ka):
            assert key.certificate is not None
            device_credentials.append(
                CertifiedKey(x509.load_der_x509_certificate(key.certificate), key.private_key)
            )
    keystore = state / "keystore"
    export_keystore(keystore, device_credentials, include_keys=True)
    for stem in ("root-ca", "issuing-ca", "device-ca"):  # for tools that check certification paths
        shutil.copyfile(state / "pki" / f"{stem}.pem", keystore / f"lab-{stem}.pem")
    say(f"wrote {len(profiles)} vanilla meter profiles to {rel(tray_dir)}/ (fresh device keys)")
    say(f"wrote {rel(state / 'tray.txt')}: {len(profiles)} meters over areas {AREAS[0]}-{AREAS[-1]}")
    say(
        f"exported {len(device_credentials)} device DS/KA certificates and keys to {rel(keystore)}/ "
        f"(vanilla and area credentials are already there from init); "
        f"{len(list(keystore.glob('*.pem')))} certificates in all"
    )
    return assignments


# --- 4: processes ----------------------------------------------------------------------------------


class Child:
    """A subprocess whose stdout lines are copied to its log file and queued for the demo to read."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log
        self.log: IO[str] = log.open("w", buffering=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self._pump = threading.Thread(target=self._copy, daemon=True)
        self._pump.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def first_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise DemoFailed(f"{self.name} printed nothing within {timeout:.0f} s") from None
        if line is None:
            raise DemoFailed(f"{self.name} exited with {self.proc.wait()} before it started")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=2)
        self.log.close()


def wait_healthy(server: Child, port: int, state: Path) -> None:
    """Poll gRPC health over mTLS (as bench-01) until the server says SERVING."""
    from scripts.lab_service import ServerNotServing, wait_until_serving

    try:
        wait_until_serving(state, port, server.proc.poll, STARTUP_TIMEOUT)
    except ServerNotServing as exc:
        raise DemoFailed(str(exc)) from exc


# --- 5: hand out and check -------------------------------------------------------------------------


def check_commands(state: Path, commands: list[Path]) -> None:
    """One command through the `vdno-bench inspect` CLI, then all of this run's commands in process."""
    from client.inspect import inspect_bytes, load_input

    keystore = state / "keystore"
    sample = commands[0]
    args = [PY, "-m", "client.cli", "inspect", str(sample), "--keystore", str(keystore), "--json"]
    done = subprocess.run(args, cwd=ROOT, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise DemoFailed(
            f"vdno-bench inspect {rel(sample)} exited with {done.returncode}: {done.stderr.strip()}"
        )
    verification = json.loads(done.stdout).get("verification", {})
    signature = verification.get("signature", {})
    say(f"$ vdno-bench inspect {rel(sample)} --keystore {rel(keystore)}")
    say(f"  exit 0: signature {signature.get('status', '?')} ({signature.get('detail', '')})")

    bad = []
    for path in commands:
        report = inspect_bytes(load_input(str(path)), keystore)
        if report.exit_code != 0:
            bad.append(f"{path.name}: {report.reason}")
    if bad:
        raise DemoFailed("saved commands that do not verify: " + "; ".join(bad))
    say(f"all {len(commands)} commands saved by this run verify against {rel(keystore)}/")


def demo(state: Path) -> None:
    from scripts.lab_service import free_port

    step(f"1. bootstrap {rel(state)} (vdno-server init; idempotent)")
    run([PY, "-m", "server.main", "init", "--state", str(state), "--bench", BENCH], "vdno-server init")

    step("2-3. tray of vanilla meters and keystore")
    assignments = build_tray(state)

    step("4. start the custodian and the simulated tray")
    port = free_port()
    children: list[Child] = []
    try:
        server = Child(
            "vdno-server",
            [PY, "-m", "server.main", "serve", "--config", str(state / "config.toml")],
            state / "server.log",
            env=dict(os.environ, VDNO_LISTEN=f"127.0.0.1:{port}"),
        )
        children.append(server)
        sim = Child(
            "vdno-sim",
            [PY, "-m", "simulator", "serve", "--profiles", str(state / "tray"), "--port", "0"],
            state / "sim.log",
        )
        children.append(sim)

        first = sim.first_line(STARTUP_TIMEOUT)
        prefix = "vdno-sim listening on "
        if not first.startswith(prefix):
            raise DemoFailed(f"vdno-sim said {first!r} instead of {prefix!r}")
        sim_address = first[len(prefix) :].strip()
        say(f"vdno-sim: {len(assignments)} meters on {sim_address} (log {rel(sim.log_path)})")
        wait_healthy(server, port, state)
        say(f"vdno-server: healthy on 127.0.0.1:{port} over mTLS (log {rel(server.log_path)})")

        step(f"5. hand out {len(assignments)} meters (vdno-bench hand-out --tray {rel(state / 'tray.txt')})")
        commands_dir = state / "commands"
        started = time.time()
        done = subprocess.run(
            [
                PY, "-m", "client.cli", "hand-out",
                "--tray", str(state / "tray.txt"),
                "--server", f"127.0.0.1:{port}",
                "--ca", str(state / "pki" / "tls-ca.pem"),
                "--cert", str(state / "tls" / f"{BENCH}.pem"),
                "--key", str(state / "tls" / f"{BENCH}.key"),
                "--sim", sim_address,
                "--server-name", "localhost",
                "--save-commands", str(commands_dir),
            ],
            cwd=ROOT,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise DemoFailed(
                f"vdno-bench hand-out exited with {done.returncode}: not every meter was applied"
            )
        commands = sorted(
            (p for p in commands_dir.glob("*.hex") if p.stat().st_mtime >= started - 1),
            key=lambda p: p.stat().st_mtime,
        )
        devices = {device.hex() for device, _ in assignments}
        saved = {p.name.rsplit("-", 1)[0] for p in commands}
        if saved != devices:
            raise DemoFailed(
                f"expected a saved command for each of {len(devices)} meters, found {len(saved)}"
            )

        step("checks")
        check_commands(state, commands)
        run([PY, "-m", "server.main", "verify-audit", "--config", str(state / "config.toml")],
            "vdno-server verify-audit")  # fmt: skip
    finally:
        step("6. stop")
        for child in reversed(children):
            child.stop()
            say(f"stopped {child.name} (exit {child.proc.returncode})")

    say(
        f"\nvdno demo passed: {len(assignments)} of {len(assignments)} meters handed out to areas "
        f"{AREAS[0]}-{AREAS[-1]}."
    )
    say(f"  state folder: {rel(state)}/ (config.toml, vdno.db, server.log, tray/, tray.txt)")
    say(f"  commands:     {rel(commands_dir)}/<device>-<counter>.hex ({len(commands)} from this run)")
    say(f"  keystore:     {rel(state / 'keystore')}/<eui>-ds.pem, <eui>-ka.pem (RTDS keystore naming)")
    say(f"  check one:    vdno-bench inspect {rel(commands[0])} --keystore {rel(state / 'keystore')}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path} cannot be read: {exc})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", type=Path, default=Path("state"), help="state folder (default: state)")
    args = parser.parse_args()
    state = args.state.resolve()
    say(
        f"vdno demo: bootstrap {rel(state)}/, start the custodian and a simulated tray of {METERS} vanilla "
        f"meters (MAC checking off: no DCC ACB in the lab), hand every meter to a DNO area "
        f"{AREAS[0]}-{AREAS[-1]}, check the signed commands and the audit log, stop."
    )
    began = time.monotonic()
    try:
        demo(state)
    except (DemoFailed, OSError) as exc:
        say(f"\nvdno demo FAILED: {exc}")
        log = state / "server.log"
        if log.exists():
            say(f"--- last lines of {rel(log)} ---")
            say(tail(log))
        return 1
    except KeyboardInterrupt:
        say("\nvdno demo interrupted")
        return 130
    say(f"  took {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
