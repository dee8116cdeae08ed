"""`make mutate` (scripts/mutation_report.py) measures what it says: the tests of a module run against its
mutants. Since the tests import vdno.server... from the installed layout, a work folder laid out otherwise
lets every mutant go untested and the report shows 0 mutants (as it did once, unnoticed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_mutate_runs_the_tests_against_the_mutants(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mutation_report.py"), "--work", str(tmp_path), "hsm-faults"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    row = re.search(r"^hsm-faults\s+server/hsm/faults\.py\s+(\d+)/(\d+)\s+([\d.]+)%.*PASS", done.stdout, re.M)
    assert row is not None, done.stdout
    killed, total = int(row.group(1)), int(row.group(2))
    assert total >= 20 and killed == total, done.stdout
    assert "not run" not in row.group(0)
    assert (tmp_path / "hsm-faults" / "mutants" / "vdno" / "server" / "hsm" / "faults.py").is_file()
