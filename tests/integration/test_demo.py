"""`make demo` runs: the whole journey of 20 meters with the real command-line tools, twice on one state
folder (a re-run bootstraps nothing and still passes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_demo(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def test_the_demo_journey_passes_and_leaves_what_it_promises(tmp_path: Path, softhsm_module: Path) -> None:
    state = tmp_path / "state"
    first = run_demo(state)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "vdno demo passed: 20 of 20 meters made the whole journey" in first.stdout

    hand_in = sorted((state / "commands" / "hand-in").glob("*.hex"))
    hand_out = sorted((state / "commands" / "hand-out").glob("*.hex"))
    rotation = sorted((state / "commands" / "rotation").glob("*.hex"))
    assert len(hand_in) == len(rotation) == len(hand_out) == 20
    for saved in hand_in + rotation + hand_out:
        assert saved.read_text().startswith("dd"), f"{saved.name} is not MAC-framed"
    requests = sorted((state / "duis" / "hand-in" / "requests").rglob("*.xml"))
    assert len(requests) == 20
    assert len(list((state / "duis" / "hand-in" / "requests").glob("area-*/manifest.jsonl"))) == 14

    second = run_demo(state)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert "already initialised; nothing changed" in second.stdout
    assert "fleet: 40 meters in the records" in second.stdout
    assert len(list((state / "audit").glob("checkpoint-*.json"))) == 2
    assert "against all 2 checkpoints" in second.stdout
