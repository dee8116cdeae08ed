"""`make mutate`: mutation testing (mutmut 3) of the rule-bearing modules, one module at a time, each against
only the fast unit tests that exercise it; prints killed/total per module and PASS/FAIL against the goal.

Each module runs in its own work folder, .mutmut/<module>/: links to the repository's folders, and a copy of
pyproject.toml with a [tool.mutmut] section naming the module's file (`only_mutate`) and its test files
(`pytest_add_cli_args_test_selection`). mutmut copies the module's package into .mutmut/<module>/mutants/,
imports it from there ahead of the installed one, collects which of those tests call which function, and runs
each mutant against the tests that call its function. Results stay in the work folder: a second run re-tests
only what changed (--fresh starts over).

Not part of `make test` or CI: a full run takes tens of minutes on a 2-core machine (docs/testing.md,
"Mutation testing").

    .venv/bin/python scripts/mutation_report.py                  # every module, then the table
    .venv/bin/python scripts/mutation_report.py policy issuance  # some modules
    .venv/bin/python scripts/mutation_report.py --report-only    # the table from the last runs
    .venv/bin/python scripts/mutation_report.py --survivors policy  # the surviving mutants' diffs
    .venv/bin/python scripts/mutation_report.py --recheck interceptors  # survivors against all its tests
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutmut"
GOAL = 90.0  # per cent of mutants killed, per module


def _installed(path: str) -> str:
    return "vdno/" + path


def _dotted(path: str) -> str:
    return _installed(path).removesuffix(".py").replace("/", ".")


@dataclass(frozen=True)
class Module:
    """A rule-bearing module: its file, the functions mutated (mutmut name globs; all by default) and the
    unit tests that exercise it (the only tests its mutants run against). `more`: further files of the same
    package whose functions are mutated with it and scored as one, each with its function globs (a rule
    whose code spans modules)."""

    name: str
    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ("*",)
    isolation: str = "fork"  # "forkserver" where the tests start gRPC servers (not fork-safe)
    deselect: tuple[str, ...] = ()  # tests that read the module's source (mutmut rewrites it)
    more: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def package(self) -> str:
        """The mutated package as the tests import it: vdno/server for server/... (pyproject.toml maps
        vdno.server to server/)."""
        return "vdno/" + self.path.split("/")[0]

    @property
    def installed_paths(self) -> list[str]:
        return [_installed(self.path), *(_installed(path) for path, _ in self.more)]

    @property
    def files(self) -> str:
        """The mutated files, for the report: the further ones by their name in the first one's folder."""
        folder = self.path.rpartition("/")[0] + "/"
        return ", ".join([self.path, *(path.removeprefix(folder) for path, _ in self.more)])

    def globs(self) -> list[str]:
        globs = [f"{_dotted(self.path)}.{f}" for f in self.functions]
        return globs + [f"{_dotted(path)}.{f}" for path, functions in self.more for f in functions]


MODULES: tuple[Module, ...] = (
    Module(
        "policy",
        "server/domain/policy.py",
        ("tests/server/domain/test_policy.py", "tests/server/domain/test_issuance.py"),
    ),
    Module(
        "issuance",
        "server/domain/issuance.py",
        (
            "tests/server/domain/test_issuance.py",
            "tests/server/domain/test_issuance_service.py",
        ),
    ),
    Module(
        "pipeline",
        "server/domain/pipeline.py",
        (
            "tests/server/domain/test_pipeline.py",
            "tests/server/domain/test_pipeline_steps.py",
            "tests/server/domain/test_issuance.py",
        ),
    ),
    Module(
        "client-checks",
        "client/checks.py",
        ("tests/client/test_bench_checks.py", "tests/client/test_bench_forged.py"),
        deselect=("tests/client/test_bench_forged.py::test_every_refusal_reason_has_a_test",),
    ),
    Module(
        "interceptors",
        "server/rpc/interceptors.py",
        ("tests/server/test_interceptor.py", "tests/server/rpc/test_edge.py"),
        isolation="forkserver",
    ),
    Module(
        "store-audit",
        "server/store/audit.py",
        (
            "tests/server/store/test_audit_store.py",
            "tests/server/store/test_audit_tip_and_ranges.py",
            "tests/server/domain/test_audit_chain.py",
        ),
    ),
    Module(
        "audit-chain",
        "server/domain/audit.py",
        ("tests/server/domain/test_audit_chain.py", "tests/server/domain/test_checkpoints.py"),
    ),
    Module(
        "store-counters",
        "server/store/issuances.py",
        ("tests/server/store/test_sql_store.py", "tests/server/store/test_outstanding.py"),
        # the counter: allocated above the floor while the bench and generation allow it (_begin_op and
        # the statements it runs), why it was not (_refusal), the PostgreSQL row lock, a generation's row
        # (added with its generation, by the store's reference data in sql.py)
        functions=(
            "xǁ_HotPathSqlǁ__init__*",
            "xǁIssuanceRecordsǁ_begin_op*",
            "xǁIssuanceRecordsǁ_refusal*",
            "xǁIssuanceRecordsǁ_counter_lock*",
            "xǁIssuanceRecordsǁwrite_issuance_step*",
        ),
        more=(("server/store/sql.py", ("xǁSqlCustodyStoreǁadd_generation*",)),),
    ),
    Module("hsm-faults", "server/hsm/faults.py", ("tests/server/hsm/test_faults.py",)),
    Module(
        "simulator",
        "simulator/device.py",
        (
            "tests/simulator/test_sim_forged.py",
            "tests/simulator/test_sim_rtds.py",
            "tests/simulator/test_sim_device.py",
        ),
    ),
)

KILLED = {"killed", "timeout", "caught by type check"}
NOT_RUN = {"not checked", "skipped"}

# The folders pyproject.toml maps under the vdno namespace (vdno.server -> server/, ...).
NAMESPACED = ("admin", "client", "duis", "gbcs", "labdcc", "labpki", "server", "simulator")

# The repository's folders a work folder links to (tests import them from the repository's root).
LINKED = (
    "admin",
    "client",
    "docs",
    "duis",
    "gbcs",
    "labdcc",
    "labpki",
    "proto",
    "scripts",
    "server",
    "simulator",
    "softhsm-config",
    "tests",
)


def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _lay_out_namespace(folder: Path, leave_out: str = "") -> None:
    """`folder`/vdno laid out as the installed package (pyproject.toml's package-dir): vdno/server -> server/,
    ..., vdno/v1 and vdno's own modules; `leave_out` is the package mutmut writes there itself."""
    namespace = folder / "vdno"
    namespace.mkdir(parents=True, exist_ok=True)
    entries = {p.name: p for p in (ROOT / "vdno").iterdir() if p.name != "__pycache__"}
    entries |= {name: ROOT / name for name in NAMESPACED}
    for name, target in entries.items():
        link = namespace / name
        if name != leave_out and not link.is_symlink():
            link.symlink_to(target, target_is_directory=target.is_dir())


def prepare(module: Module, fresh: bool) -> Path:
    """The module's work folder, with its pyproject.toml (the repository's, plus [tool.mutmut]). The tests
    import vdno.server...; mutmut names a mutant by its file's path and imports the mutated copy from
    mutants/ first, so the work folder lays out vdno/ as installed and mutmut mutates vdno/<package>/..."""
    work = WORK / module.name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    _lay_out_namespace(work)
    _lay_out_namespace(work / "mutants", leave_out=module.package.split("/")[1])
    missing = [t for t in module.tests if not (ROOT / t).is_file()]
    if missing:
        raise SystemExit(f"{module.name}: test files missing: {', '.join(missing)}")
    pytest_args = ["-p", "no:cacheprovider", "-q"]
    for test in module.deselect:
        pytest_args += ["--deselect", test]
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    config += (
        "\n[tool.mutmut]\n"
        f"source_paths = {_toml_list([module.package])}\n"
        f"only_mutate = {_toml_list(module.installed_paths)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(module.tests)}\n"
        f"pytest_add_cli_args = {_toml_list(pytest_args)}\n"
        f'process_isolation = "{module.isolation}"\n'
        # a mutant that hangs (a lock never released) is stopped after 4 x (its tests' time + 1 s) of wall
        # time, and counted as killed (a timeout); mutmut's default (x 15) spends minutes on each such
        # mutant of the pipeline
        "timeout_multiplier = 4.0\n"
        "use_git_change_detection = false\n"
    )
    target = work / "pyproject.toml"
    if not target.exists() or target.read_text(encoding="utf-8") != config:
        target.write_text(config, encoding="utf-8")
    return work


def mutmut(
    work: Path, *args: str, capture: bool = False, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("COVERAGE_PROCESS_START", None)  # no coverage inside mutant runs
    if log is None:
        return subprocess.run(
            [str(exe), *args], cwd=work, env=env, text=True, capture_output=capture, check=False
        )
    with log.open("w", encoding="utf-8") as out:
        return subprocess.run(
            [str(exe), *args], cwd=work, env=env, text=True, stdout=out, stderr=subprocess.STDOUT, check=False
        )


def run(module: Module, fresh: bool, children: int) -> float:
    work = prepare(module, fresh)
    started = time.monotonic()
    print(f"== {module.name}: {module.files} against {', '.join(module.tests)}", flush=True)
    log = work / "run.log"
    # Named mutants are always run again. A whole module is named by nothing, so that mutants already
    # killed stay killed while their code is unchanged; the earlier survivors are then named, so that new
    # tests are tried on them (--fresh starts over).
    survivors = score(results(module)).survivors
    names = module.globs() if module.functions != ("*",) else []
    done = mutmut(work, "run", "--max-children", str(children), *names, log=log)
    if done.returncode == 0 and survivors and not names:
        again = [n for n in survivors if n in results(module)]
        if again:
            done = mutmut(
                work, "run", "--max-children", str(children), *again, log=log.with_suffix(".again.log")
            )
    if done.returncode != 0:
        print(f"{module.name}: mutmut run exited {done.returncode} (see {log})", file=sys.stderr)
    return time.monotonic() - started


def mutmut_results(module: Module) -> dict[str, str]:
    """mutant name -> status as mutmut recorded it, for the module's mutated functions."""
    work = WORK / module.name
    if not (work / "mutants").is_dir():
        return {}
    done = mutmut(work, "results", "--all", "true", capture=True)
    statuses: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and any(fnmatch.fnmatch(name, g) for g in module.globs()):
            statuses[name] = status
    return statuses


def _fingerprint(module: Module) -> str:
    """What a recheck's verdicts depend on: the mutated files and the module's test files."""
    digest = hashlib.sha256()
    mutated = (WORK / module.name / "mutants" / p for p in module.installed_paths)
    for path in (*mutated, *(ROOT / t for t in module.tests)):
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def _rechecked(module: Module) -> dict[str, str]:
    path = WORK / module.name / "recheck.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    return dict(saved["results"]) if saved.get("fingerprint") == _fingerprint(module) else {}


def recheck(module: Module) -> None:
    """Run each surviving mutant against all of the module's tests (pytest stops at the first failure).
    mutmut runs a mutant only against the tests it saw call the mutant's function, and a function called
    once per module-scoped fixture or cached handler (the interceptor wraps each method once, on its first
    call) is seen by the first such test only. Slow: every true survivor runs all the module's tests."""
    work = WORK / module.name
    verdicts = _rechecked(module)
    names = [
        n for n, s in mutmut_results(module).items() if s in ("survived", "no tests") and n not in verdicts
    ]
    args = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    for test in module.deselect:
        args += ["--deselect", test]
    for name in names:
        env = {**os.environ, "MUTANT_UNDER_TEST": name, "PY_IGNORE_IMPORTMISMATCH": "1"}
        env.pop("COVERAGE_PROCESS_START", None)
        try:
            done = subprocess.run(
                [*args, *module.tests], cwd=work / "mutants", env=env, capture_output=True, timeout=900
            )
            verdicts[name] = {0: "survived", 1: "killed"}.get(done.returncode, "suspicious")
        except subprocess.TimeoutExpired:
            verdicts[name] = "timeout"
        print(f"   recheck {name}: {verdicts[name]}", flush=True)
    (work / "recheck.json").write_text(
        json.dumps({"fingerprint": _fingerprint(module), "results": verdicts}, indent=1), encoding="utf-8"
    )


def results(module: Module) -> dict[str, str]:
    """mutant name -> status: mutmut's, or the recheck's where mutmut's mutant survived."""
    statuses = mutmut_results(module)
    for name, verdict in _rechecked(module).items():
        if statuses.get(name) in ("survived", "no tests"):
            statuses[name] = verdict
    return statuses


@dataclass(frozen=True)
class Score:
    killed: int
    total: int
    unrun: int
    timeouts: int
    survivors: tuple[str, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 0.0


def score(statuses: dict[str, str]) -> Score:
    unrun = sum(1 for s in statuses.values() if s in NOT_RUN)
    total = len(statuses) - unrun
    killed = sum(1 for s in statuses.values() if s in KILLED)
    survivors = tuple(sorted(n for n, s in statuses.items() if s not in KILLED and s not in NOT_RUN))
    timeouts = sum(1 for s in statuses.values() if s == "timeout")
    return Score(killed, total, unrun, timeouts, survivors)


def report(modules: list[Module], seconds: dict[str, float]) -> bool:
    print()
    print(f"{'module':<16} {'file':<34} {'killed/total':>13} {'score':>7} {'w/o t/o':>7}  result   time")
    ok = True
    for module in modules:
        s = score(results(module))
        verdict = "PASS" if s.total and s.percent >= GOAL else "FAIL"
        ok = ok and verdict == "PASS"
        took = f"{seconds[module.name] / 60:.1f} min" if module.name in seconds else ""
        notes = [f"{s.timeouts} timed out"] if s.timeouts else []
        notes += [f"{s.unrun} not run"] if s.unrun else []
        unrun = f" ({', '.join(notes)})" if notes else ""
        strict = 100.0 * (s.killed - s.timeouts) / s.total if s.total else 0.0
        print(
            f"{module.name:<16} {module.files:<34} {f'{s.killed}/{s.total}':>13} {s.percent:6.1f}% "
            f"{strict:6.1f}%  {verdict:<7}  {took}{unrun}"
        )
    print(f"goal: at least {GOAL:.0f}% of each module's mutants killed (timeouts count as killed)")
    print("w/o t/o: the score counting timeouts as survivors (on a loaded machine a slow kill times out)")
    return ok


def survivors(module: Module) -> None:
    s = score(results(module))
    work = WORK / module.name
    for name in s.survivors:
        done = mutmut(work, "show", name, capture=True)
        print(done.stdout)


def main() -> int:
    global WORK
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="modules to run (default: all)")
    parser.add_argument("--report-only", action="store_true", help="print the table from the last runs")
    parser.add_argument("--survivors", action="store_true", help="print the surviving mutants' diffs")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results and start over")
    parser.add_argument(
        "--recheck", action="store_true", help="run survivors against all the module's tests (slow)"
    )
    parser.add_argument("--children", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--work", type=Path, help=f"where the modules' work folders are (default {WORK})")
    args = parser.parse_args()
    if args.work is not None:
        WORK = args.work.resolve()
    by_name = {m.name: m for m in MODULES}
    unknown = [n for n in args.modules if n not in by_name]
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.modules] if args.modules else list(MODULES)
    if args.survivors:
        for module in chosen:
            survivors(module)
        return 0
    if args.recheck:
        for module in chosen:
            recheck(module)
    seconds: dict[str, float] = {}
    if not args.report_only and not args.recheck:
        for module in chosen:
            seconds[module.name] = run(module, args.fresh, args.children)
    return 0 if report(chosen, seconds) else 1


if __name__ == "__main__":
    sys.exit(main())
