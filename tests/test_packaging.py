"""What `pip install` gets: one wheel (and an sdist) whose every module is under the `vdno` namespace, and a
bench that installs alone, without the server extra, in a fresh virtual environment.

Slow (marked `slow`: about a minute): builds once per session with `python -m build --no-isolation` (the
development venv's setuptools, no download), and installs the bench into a fresh venv with pip, which fetches
the bench's dependencies through the machine's ordinary pip configuration (its package index).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACB = "90b3d51f30000002"
NO_BY_NO = "6.15.1_CS02bNOByNO/CS02bNOByNO_6.15.1_SUCCESS_COMMAND_GBCS.HEX"
SERVER_ONLY = ("pkcs11", "sqlalchemy", "alembic", "psycopg", "prometheus_client", "orjson")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel and an sdist of the checkout, built once per session (the wheel from the sdist)."""
    if not (ROOT / "vdno" / "v1" / "custodian_pb2.py").is_file():
        pytest.fail("the gRPC stubs are not generated: run scripts/gen_proto.py (make proto)")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def expected_modules() -> set[str]:
    """Every .py file of the repository's package folders, at its place in the wheel (vdno/server/... for
    server/...), as pyproject's package-dir maps them."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        target = package.replace(".", "/")
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT / folder)
            if "__pycache__" not in relative.parts:
                expected.add(f"{target}/{relative.as_posix()}")
    return expected


def test_wheel_holds_only_the_vdno_namespace(dist: Path) -> None:
    names = zipfile.ZipFile(only(dist, "vdno-*.whl")).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"vdno", "vdno-0.1.0.dist-info"}, tops
    missing = expected_modules() - set(names)
    assert not missing, sorted(missing)
    # the generated stubs, the migrations (read from their folder at run time) and Alembic's template
    for name in (
        "vdno/v1/custodian_pb2.py",
        "vdno/v1/custodian_pb2_grpc.py",
        "vdno/server/store/migrations/env.py",
        "vdno/server/store/migrations/versions/0001_initial.py",
        "vdno/server/store/migrations/script.py.mako",
    ):
        assert name in names, name
    entry_points = zipfile.ZipFile(only(dist, "vdno-*.whl")).read("vdno-0.1.0.dist-info/entry_points.txt")
    assert "vdno-bench = vdno.client.cli:app" in entry_points.decode()
    assert "vdno-server = vdno.server.main:app" in entry_points.decode()


def test_sdist_keeps_the_repository_layout(dist: Path) -> None:
    with tarfile.open(only(dist, "vdno-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for name in (
        "pyproject.toml",
        "README.md",
        "server/main.py",
        "client/cli.py",
        "vdno/__init__.py",
        "vdno/v1/custodian_pb2.py",
        "server/store/migrations/script.py.mako",
    ):
        assert name in names, name


def test_bench_installs_alone_and_inspects_a_vector(dist: Path, tmp_path: Path, vectors_dir: Path) -> None:
    venv = tmp_path / "bench-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, bench = venv / "bin" / "python", venv / "bin" / "vdno-bench"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COVERAGE_PROCESS_START")}
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(only(dist, "vdno-*.whl"))],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the bench alone: none of the server extra's packages came with it
    probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    present = subprocess.run(
        [str(python), "-c", probe, *SERVER_ONLY],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    ).stdout.split()
    assert present == [], present

    helped = subprocess.run(
        [str(bench), "--help"], capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path
    )
    assert helped.returncode == 0, helped.stderr
    assert "inspect" in helped.stdout and "hand-out" in helped.stdout

    inspected = subprocess.run(
        [
            str(bench),
            "inspect",
            str(vectors_dir / NO_BY_NO),
            "--keystore",
            str(vectors_dir / "keystore"),
            "--acb",
            ACB,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["decoded"] is True
    assert report["verification"]["signature"]["status"] == "valid"
    # and the installed code, not the checkout, answered
    where = subprocess.run(
        [str(python), "-c", "import vdno.client.cli as c; print(c.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where
