"""Lay out build/mypy-src/vdno as the installed package: symlinks to the repository's folders
(vdno/server -> server, ...), for mypy, which does not follow setuptools' package-dir mapping
(pyproject.toml, [tool.mypy])."""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "mypy-src" / "vdno"


def main() -> int:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE.parent, ignore_errors=True)
    TREE.mkdir(parents=True)
    for entry in (ROOT / "vdno").iterdir():  # vdno/__init__.py and the generated vdno/v1
        if entry.name != "__pycache__":
            (TREE / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "vdno":
            (TREE / package.removeprefix("vdno.")).symlink_to(ROOT / folder, target_is_directory=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
