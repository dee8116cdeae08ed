"""Files that hold records are created readable and writable by the service's user only."""

from __future__ import annotations

import contextlib
import os

PRIVATE = 0o600


def create_private_file(path: str | os.PathLike[str] | None) -> None:
    """Create `path` empty with mode 0600 unless it exists. For a SQLite database (an empty file is an empty
    database): SQLite creates its -wal and -shm files with the database file's permissions. None, "" and
    ":memory:" name no file; a missing folder is left for the caller to report."""
    if path is None or str(path) in ("", ":memory:") or str(path).startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
