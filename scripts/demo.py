"""`make demo`: a tray of 20 meters in service across the 14 DNO areas makes the whole journey, with the real
tools, as the people who run them would:

  0. bootstrap: `vdno-labdcc init` (the lab's area DNOs, DCC and ACB) and `vdno-server init` (token, vanilla
     generation 1, benches, officers, database); `vdno-sim make-tray` makes 20 fresh meters, each in service
     in an area, requiring DCC's ACB-SMD MAC as real meters do; the custodian, the simulated tray and the
     lab DCC's DUIS endpoint start;
  1. hand-in: a triage bench orders it for each meter (`vdno-bench hand-in order`); an officer exports the
     DUIS requests per area (`vdno-admin hand-in export`); the lab area DNOs sign and DCC's ACB adds its MAC
     (`vdno-labdcc answer`); the officer imports the returned commands, each checked against its order
     (`vdno-admin hand-in import`); another bench applies them (`vdno-bench hand-in apply`);
  2. in stock: every meter on the active vanilla generation (`vdno-admin fleet holding`);
  3. rotation: officers create the next generation (keys generated in the HSM), have the lab SMKI certify
     it from CSRs the HSM signed, import the certificates and activate it under two-person control
     (`vdno-admin generations ...`, `approvals approve`, `approvals execute`); stock moves onto it
     (`vdno-bench rotate`);
  4. hand-out: each meter to another area, the custodian's signed command MAC-framed by the lab ACB on the
     way (`vdno-bench hand-out --dcc`);
  checks: every meter read back holds its new area's certificates; the fleet view; one meter's history;
  saved commands inspected with their MAC (`vdno-bench inspect --acb`); a signed audit checkpoint written to
  STATE/audit/ and the log verified against every checkpoint there (`vdno-admin audit checkpoint, verify`).
Exit 0 only if every meter made the whole journey. Commands applied are left in STATE/commands/hand-in/,
rotation/ and hand-out/ as <device>-<counter>.hex, exactly as the meter received them (MAC header
included); the DUIS requests exported and answered in STATE/duis/.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.lab_service import open_private_log  # noqa: E402

METERS = 20
AREAS = "10-23"
BENCH, APPLY_BENCH, OFFICER, APPROVER = "bench-01", "bench-02", "officer-01", "officer-02"
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


def run(args: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a tool; its stdout. DemoFailed with its stderr when it exits non-zero."""
    done = subprocess.run(list(args), cwd=ROOT, text=True, capture_output=True, check=False, env=env)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise DemoFailed(f"{what} exited with {done.returncode}: {detail}")
    return done.stdout


# --- processes ---------------------------------------------------------------------------------------


class Child:
    """A subprocess whose stdout lines are copied to its log file and queued for the demo to read."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log
        self.log: IO[str] = open_private_log(log, "w")
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

    def first_line(self, prefix: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """What follows `prefix` on the first line the process prints."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise DemoFailed(f"{self.name} printed nothing within {timeout:.0f} s") from None
        if line is None:
            raise DemoFailed(f"{self.name} exited with {self.proc.wait()} before it started")
        if not line.startswith(prefix):
            raise DemoFailed(f"{self.name} said {line!r} instead of {prefix!r}")
        return line[len(prefix) :].strip()

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


@dataclass
class Lab:
    """The running parts and how the tools reach them."""

    state: Path
    server: str  # 127.0.0.1:PORT
    sim: str  # 127.0.0.1:PORT
    dcc: str  # http://127.0.0.1:PORT

    def bench(self, bench: str, *args: str) -> list[str]:
        return [
            PY, "-m", "vdno.client.cli", *args,
            "--config", str(self.state / "clients" / f"{bench}.toml"),
            "--server", self.server, "--sim", self.sim,
        ]  # fmt: skip

    def admin(self, *args: str, officer: str = OFFICER) -> list[str]:
        config = self.state / "clients" / f"{officer}.toml"
        return [PY, "-m", "vdno.admin", "--config", str(config), "--server", self.server, "--json", *args]


def tray_devices(tray_file: Path) -> list[tuple[str, int]]:
    """(device, hand-out area) per line of the tray file."""
    out = []
    for line in tray_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            device, area = line.split()
            out.append((device.lower(), int(area)))
    return out


def next_first_index(state: Path) -> int:
    """Each run's meters get new device ids: the records of an earlier run's meters stay true."""
    marker = state / "demo-runs"
    runs = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(f"{runs + 1}\n")
    return 1 + 1000 * runs


# --- stages ------------------------------------------------------------------------------------------


def bootstrap(state: Path) -> Path:
    step(f"0. bootstrap {rel(state)}/ (idempotent) and a tray of {METERS} meters in service in areas {AREAS}")
    say(run([PY, "-m", "vdno.labdcc", "init", "--state", str(state)], "vdno-labdcc init").strip())
    say(
        run(
            [
                PY,
                "-m",
                "vdno.server.main",
                "init",
                "--state",
                str(state),
                "--bench",
                BENCH,
                "--bench",
                APPLY_BENCH,
            ],
            "vdno-server init",
        ).strip()
    )
    tray_dir, tray_file = state / "tray", state / "tray.txt"
    if tray_dir.exists():
        shutil.rmtree(tray_dir)
    say(
        run(
            [
                PY, "-m", "vdno.simulator", "make-tray", "--state", str(state), "--out", str(tray_dir),
                "--count", str(METERS), "--first", str(next_first_index(state)), "--in-areas", AREAS,
                "--tray", str(tray_file),
            ],
            "vdno-sim make-tray",
        ).strip()
    )  # fmt: skip
    return tray_file


def hand_in(lab: Lab, tray_file: Path, devices: list[str]) -> None:
    step(f"1. hand-in: {len(devices)} meters from their area DNOs into vanilla custody")
    ordered = json.loads(
        run(
            lab.bench(BENCH, "hand-in", "order", "--tray", str(tray_file), "--json"),
            "vdno-bench hand-in order",
        )
    )["meters"]
    areas = sorted({r["area"] for r in ordered})
    say(f"{BENCH} ordered {len(ordered)} hand-ins (meters held by the DNOs of areas {areas[0]}-{areas[-1]})")

    requests, responses = (
        lab.state / "duis" / "hand-in" / "requests",
        lab.state / "duis" / "hand-in" / "responses",
    )
    for folder in (requests, responses):
        if folder.exists():
            shutil.rmtree(folder)
    exported = json.loads(
        run(lab.admin("hand-in", "export", "--out", str(requests)), "vdno-admin hand-in export")
    )
    manifests = sorted(requests.glob("area-*/manifest.jsonl"))
    say(
        f"{OFFICER} exported {len(exported)} DUIS 6.15.1 requests (CommandVariant 6) to {rel(requests)}/ "
        f"with {len(manifests)} area manifests"
    )
    run([PY, "-m", "vdno.labdcc", "answer", "--state", str(lab.state), "--requests", str(requests),
         "--out", str(responses)], "vdno-labdcc answer")  # fmt: skip
    say(f"the lab area DNOs signed, the lab ACB MAC'd: {len(list(responses.rglob('*.xml')))} responses")
    imported = json.loads(run(lab.admin("hand-in", "import", str(responses)), "vdno-admin hand-in import"))
    statuses = {r["status"] for r in imported}
    say(f"{OFFICER} imported {len(imported)} commands, each checked against its order: {sorted(statuses)}")
    if statuses != {"authorised"}:
        raise DemoFailed(f"imports not all authorised: {imported}")

    applied = json.loads(
        run(
            lab.bench(APPLY_BENCH, "hand-in", "apply", "--tray", str(tray_file), "--json",
                      "--save-commands", str(lab.state / "commands" / "hand-in")),
            "vdno-bench hand-in apply",
        )
    )["meters"]  # fmt: skip
    done = [r for r in applied if r["status"] == "applied"]
    say(f"{APPLY_BENCH} applied {len(done)} of {len(applied)} hand-in commands")
    if len(done) != len(devices):
        raise DemoFailed(f"hand-in not applied everywhere: {applied}")


def active_generation(lab: Lab) -> int:
    generations = json.loads(run(lab.admin("generations", "list"), "vdno-admin generations list"))
    return max(int(g["generation"]) for g in generations if g["status"] == "active")


def in_stock(lab: Lab, devices: list[str]) -> int:
    step("2. in stock: the fleet view")
    generation = active_generation(lab)
    holding = set(
        json.loads(
            run(lab.admin("fleet", "holding", "--generation", str(generation)), "vdno-admin fleet holding")
        )
    )
    ours = {d.upper() for d in devices}
    say(f"{len(ours & holding)} of this run's {len(ours)} meters are on vanilla generation {generation}")
    if not ours <= holding:
        raise DemoFailed(f"not on vanilla: {sorted(ours - holding)}")
    return generation


def rotation(lab: Lab, devices: list[str], old: int) -> int:
    step("3. rotation: officers make the next generation; stock moves onto it")
    generations = json.loads(run(lab.admin("generations", "list"), "vdno-admin generations list"))
    number = max(int(g["generation"]) for g in generations) + 1
    entity = (b"VDNO\x00\x00\x00" + bytes([number % 256])).hex()
    created = json.loads(
        run(lab.admin("generations", "create", "--entity-id", entity), "vdno-admin generations create")
    )
    if int(created["generation"]) != number:
        raise DemoFailed(f"expected generation {number}, got {created['generation']}")
    say(f"{OFFICER} created generation {number} (entity {entity.upper()}): keys generated in the HSM")
    pki = lab.state / "pki"
    for usage in ("ds", "ka"):
        csr, pem = pki / f"vanilla-g{number}-{usage}.csr", pki / f"vanilla-g{number}-{usage}.pem"
        run(
            lab.admin("generations", "csr", str(number), "--usage", usage, "--out", str(csr)),
            "vdno-admin csr",
        )
        issue = [PY, "-m", "vdno.labdcc", "smki-issue", "--state", str(lab.state), "--csr", str(csr)]
        run([*issue, "--entity-id", entity, "--usage", usage, "--out", str(pem)], "vdno-labdcc smki-issue")
    ds, ka = (str(pki / f"vanilla-g{number}-{usage}.pem") for usage in ("ds", "ka"))
    run(
        lab.admin("generations", "import", str(number), "--ds", ds, "--ka", ka),
        "vdno-admin generations import",
    )
    say(f"the lab SMKI certified it from CSRs the HSM signed; {OFFICER} imported the certificates (checked)")
    request = json.loads(
        run(lab.admin("generations", "activate", str(number), "--reason", "demo: rotate stock"), "activate")
    )
    request_id = str(request["request_id"])
    run(lab.admin("approvals", "approve", request_id, officer=APPROVER), "vdno-admin approvals approve")
    run(lab.admin("approvals", "execute", request_id), "vdno-admin approvals execute")
    if active_generation(lab) != number:
        raise DemoFailed(f"generation {number} is not active after its approved activation")
    say(f"{OFFICER} requested its activation, {APPROVER} approved, {OFFICER} executed it:")
    say(f"  generation {number} is active, {old} signing-only")
    tray = lab.state / "tray-rotation.txt"
    run(lab.admin("fleet", "holding", "--generation", str(old), "--tray", str(tray)), "fleet holding")
    on_old = {
        line.strip().lower() for line in tray.read_text().splitlines() if line and not line.startswith("#")
    }
    ours = [d for d in devices if d in on_old]
    tray.write_text("".join(f"{d}\n" for d in ours))
    results = json.loads(
        run(
            lab.bench(BENCH, "rotate", "--tray", str(tray), "--json", "--dcc", lab.dcc,
                      "--save-commands", str(lab.state / "commands" / "rotation")),
            "vdno-bench rotate",
        )
    )["meters"]  # fmt: skip
    done = [r for r in results if r["status"] == "applied"]
    say(f"{BENCH} rotated {len(done)} of {len(devices)} meters from generation {old} to {number}")
    if len(done) != len(devices):
        raise DemoFailed(f"rotation not applied everywhere: {results}")
    return number


def hand_out(lab: Lab, tray_file: Path, devices: list[str]) -> list[dict[str, Any]]:
    step(f"4. hand-out: {len(devices)} meters to other areas, through DCC's ACB")
    results: list[dict[str, Any]] = json.loads(
        run(
            lab.bench(BENCH, "hand-out", "--tray", str(tray_file), "--json", "--dcc", lab.dcc,
                      "--save-commands", str(lab.state / "commands" / "hand-out")),
            "vdno-bench hand-out",
        )
    )["meters"]  # fmt: skip
    applied = [r for r in results if r["status"] == "applied"]
    say(f"{BENCH} handed out {len(applied)} of {len(results)} meters")
    if len(applied) != len(devices):
        raise DemoFailed(f"hand-out not applied everywhere: {results}")
    return results


def check(lab: Lab, assignments: list[tuple[str, int]], handed_out: list[dict[str, Any]]) -> None:
    from vdno.client.handout import read_meter
    from vdno.client.transport import SimulatorTransport
    from vdno.gbcs.cells import KeyUsage, RemotePartyRole
    from vdno.gbcs.smki import load_certificate
    from vdno.labdcc.parties import ACB_ENTITY_ID

    step("checks")
    host, port = lab.sim.rsplit(":", 1)
    wrong = []
    with SimulatorTransport(host, int(port)) as transport:
        for device, area in assignments:
            reading = read_meter(transport, bytes.fromhex(device))
            ds = load_certificate((lab.state / "areas" / f"area-{area}-ds.pem").read_bytes())
            [role] = [r for r in reading.credentials.roles if r.role == RemotePartyRole.NETWORK_OPERATOR]
            cells = {c.key_usage: (c.subject_unique_id, c.subject_key_identifier) for c in role.cells or ()}
            if cells.get(KeyUsage.DIGITAL_SIGNATURE) != (ds.entity_id, ds.subject_key_identifier):
                wrong.append(device)
    if wrong:
        raise DemoFailed(f"meters not holding their new area's certificates: {wrong}")
    say(f"all {len(assignments)} meters, read back through the simulator, hold their new area's certificates")

    summary = json.loads(run(lab.admin("fleet", "summary"), "vdno-admin fleet summary"))
    say(f"fleet: {summary['devices']} meters in the records; by state, generation and area:")
    for count in summary["counts"]:
        where = f"area {count['area_id']}" if count["area_id"] else f"generation {count['generation']}"
        say(f"  {count['state']:<20} {where:<14} {count['count']}")
    first = assignments[0][0]
    history = json.loads(run(lab.admin("fleet", "history", first), "vdno-admin fleet history"))
    say(f"history of {first.upper()}:")
    for event in history["events"]:
        where = f"area {event['area_id']}" if event["area_id"] else f"generation {event['generation']}"
        at, what, reference = event["at"][:19], event["event"], event["reference"]
        say(f"  {at}  {what:<20} {where:<14} {reference:<14} {event['actor']}")

    keystore = lab.state / "keystore"
    for kind in ("hand-in", "rotation", "hand-out"):
        saved = sorted((lab.state / "commands" / kind).glob(f"{first}-*.hex"))
        if not saved:
            raise DemoFailed(f"no saved {kind} command for {first}")
        report = json.loads(
            subprocess.run(
                [PY, "-m", "vdno.client.cli", "inspect", str(saved[-1]), "--keystore", str(keystore),
                 "--acb", ACB_ENTITY_ID.hex(), "--json"],
                cwd=ROOT, text=True, capture_output=True, check=False,
            ).stdout or "{}"
        )  # fmt: skip
        verification = report.get("verification", {})
        signature = verification.get("signature", {}).get("status")
        mac = verification.get("mac", {}).get("status")
        inspected = f"vdno-bench inspect {rel(saved[-1])} --acb {ACB_ENTITY_ID.hex()}"
        say(f"$ {inspected}: signature {signature}, MAC {mac}")
        if (signature, mac) != ("valid", "valid"):
            raise DemoFailed(f"{saved[-1]} does not verify: {verification}")
    audit = lab.state / "audit"
    audit.mkdir(exist_ok=True)
    checkpoint = audit / f"checkpoint-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000:06d}.json"
    config = lab.state / "clients" / f"{OFFICER}.toml"
    run([PY, "-m", "vdno.admin", "--config", str(config), "--server", lab.server, "audit", "checkpoint",
         "--out", str(checkpoint)], "vdno-admin audit checkpoint")  # fmt: skip
    checkpoints = sorted(audit.glob("checkpoint-*.json"))
    against = [arg for path in checkpoints for arg in ("--against", str(path))]
    verify = [PY, "-m", "vdno.admin", "audit", "verify", "--server-config", str(lab.state / "config.toml")]
    verified = json.loads(run([*verify, *against, "--json"], "vdno-admin audit verify"))
    say(f"{OFFICER} wrote a signed audit checkpoint to {rel(checkpoint)}")
    say(f"the log verifies end to end against all {len(checkpoints)} checkpoints in {rel(audit)}/ "
        f"({verified.get('entries')} entries)")  # fmt: skip
    saved_hand_out = {f"{r['device']}-{r['counter']}.hex" for r in handed_out}
    present = {p.name for p in (lab.state / "commands" / "hand-out").glob("*.hex")}
    if not saved_hand_out <= present:
        raise DemoFailed(f"hand-out commands not saved: {sorted(saved_hand_out - present)}")


def demo(state: Path) -> None:
    tray_file = bootstrap(state)
    assignments = tray_devices(tray_file)
    devices = [device for device, _ in assignments]
    children: list[Child] = []
    try:
        server = Child(
            "vdno-server",
            [PY, "-m", "vdno.server.main", "serve", "--config", str(state / "config.toml")],
            state / "server.log",
            env=dict(os.environ, VDNO_LISTEN="127.0.0.1:0"),
        )
        children.append(server)
        sim = Child(
            "vdno-sim",
            [PY, "-m", "vdno.simulator", "serve", "--profiles", str(state / "tray")],
            state / "sim.log",
        )
        children.append(sim)
        dcc = Child(
            "vdno-labdcc", [PY, "-m", "vdno.labdcc", "serve", "--state", str(state)], state / "labdcc.log"
        )
        children.append(dcc)
        lab = Lab(
            state,
            server=f"127.0.0.1:{server.first_line('vdno-server listening on port ')}",
            sim=sim.first_line("vdno-sim listening on "),
            dcc=f"http://{dcc.first_line('vdno-labdcc listening on ')}",
        )
        say(f"custodian on {lab.server} (mTLS; log {rel(server.log_path)}), meters on {lab.sim}, "
            f"lab DCC on {lab.dcc}")  # fmt: skip

        hand_in(lab, tray_file, devices)
        old = in_stock(lab, devices)
        rotation(lab, devices, old)
        handed_out = hand_out(lab, tray_file, devices)
        check(lab, assignments, handed_out)
    finally:
        step("stop")
        for child in reversed(children):
            child.stop()
            say(f"stopped {child.name} (exit {child.proc.returncode})")

    say(f"\nvdno demo passed: {len(devices)} of {len(devices)} meters made the whole journey "
        f"(area -> hand-in -> vanilla -> rotation to the next generation -> another area).")  # fmt: skip
    say(f"  commands as the meters received them: {rel(state / 'commands')}/hand-in/, rotation/, hand-out/")
    say(f"  DUIS requests and responses:          {rel(state / 'duis')}/hand-in/")
    say(f"  officer's client settings:            {rel(state / 'clients' / (OFFICER + '.toml'))}")


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
    state.mkdir(parents=True, exist_ok=True)
    say(
        f"vdno demo: {METERS} meters in service across the 14 DNO areas are handed in through their area "
        "DNOs (lab DNOs, DCC and ACB), kept on vanilla, and handed out to other areas; meters require the "
        "ACB MAC."
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
