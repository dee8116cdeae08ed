"""Originator counters of the lab DNOs, persisted so that commands from separate runs keep increasing.

GBCS devices refuse a command whose Originator Counter is not above the last one they saw from that
originator; each value handed out is max(last + 1, microseconds since the epoch). The JSON file maps the
16-hex-digit entity id to the last value; it is rewritten atomically under an exclusive file lock, so
concurrent processes sharing a state folder never hand out the same value twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vdno.labdcc.errors import LabDccError
from vdno.labpki.store import atomic_write

MAX_COUNTER = 2**64 - 1


def microseconds_since_epoch() -> int:
    return time.time_ns() // 1000


class OriginatorCounters:
    """`next(entity_id)` -> the originator's next counter, persisted in `path` before it is returned."""

    def __init__(self, path: Path, clock: Callable[[], int] = microseconds_since_epoch) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()

    def next(self, entity_id: bytes) -> int:
        if len(entity_id) != 8:
            raise LabDccError(f"originator entity id must be 8 bytes, got {len(entity_id)}")
        name = entity_id.hex()
        with self._lock, self._file_lock():
            counters = self._read()
            value = max(counters.get(name, -1) + 1, self._clock())
            if value > MAX_COUNTER:
                raise LabDccError(f"originator counter of {name} would exceed 2**64-1")
            counters[name] = value
            text = json.dumps(counters, indent=2, sort_keys=True) + "\n"
            atomic_write(self.path, text.encode("utf-8"), 0o644)
            return value

    def last(self, entity_id: bytes) -> int | None:
        """The last value handed out to the originator, None when there was none."""
        with self._lock, self._file_lock():
            return self._read().get(entity_id.hex())

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, int]:
        try:
            data: object = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LabDccError(f"{self.path}: cannot read the originator counters: {exc}") from exc
        if not isinstance(data, dict):
            raise LabDccError(f"{self.path}: expected a JSON object of entity id -> counter")
        counters: dict[str, int] = {}
        for name, value in data.items():
            valid_name = len(name) == 16 and all(c in "0123456789abcdef" for c in name)
            valid_value = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNTER
            if not (valid_name and valid_value):
                raise LabDccError(
                    f"{self.path}: entry {name!r}: {value!r} is not entity id -> 64-bit counter"
                )
            counters[name] = value
        return counters
