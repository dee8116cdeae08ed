"""Tray runs a bench can rerun after a crash: request ids derived from the run, which a journal beside the
tray file keeps.

Request ids of a tray run are `<run>:<device>`: the run id, a colon, and the meter's EUI-64 as 16 lower-case
hex digits. The run id is
- `--request-id RUN` when given (1-47 letters, digits, '.', '_' or '-'): the same RUN gives the same ids;
- otherwise the run of the journal `<tray file>.<kind>.journal` while that run is open;
- otherwise a new one, `<kind>-<UTC yyyymmddTHHMMSS>-<6 hex digits>`, written to a new journal before any
  request is sent.
A run stays open until every meter of the tray ended as wanted (applied; ordered, for hand-in orders): the
journal then gets a `finished` line, and the next run of the tray starts a new run (`--new-run` starts one at
once). So rerunning a tray after a crash repeats every request id: the custodian answers each with the command
it signed before (never a second signature or counter), and a meter that applied its command before the crash
is found holding the command's certificates and reported with its CS02a answer.

The journal is JSON lines: a header {"run", "kind", "tray", "started"}, then one line per meter as it ends
{"device", "requestId", "status", "reason"}, then {"finished"} when the run is done. Each line is synced
before the next meter starts; a torn last line (a crash while writing it) is ignored."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from vdno.client.errors import BenchError

_RUN = re.compile(r"^[A-Za-z0-9._\-]{1,47}$")
KINDS = ("hand-out", "rotate", "hand-in-order")


class JournalError(BenchError):
    """The tray journal cannot be read or written, or a run id is malformed."""


class TrayResult(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def reason(self) -> str: ...


R = TypeVar("R", bound=TrayResult)


def parse_run(text: str) -> str:
    if not _RUN.match(text or ""):
        raise JournalError(
            f"run id {text!r:.60} must be 1-47 letters, digits, '.', '_' or '-' (request ids are RUN:DEVICE)"
        )
    return text


def new_run_id(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def request_id(run: str, device_id: bytes) -> str:
    """The request id of `device_id` in tray run `run` (see the module docstring)."""
    return f"{run}:{bytes(device_id).hex()}"


@dataclass
class TrayJournal:
    """One tray run's journal (see the module docstring). `open` finds or starts the run."""

    path: Path
    kind: str
    run: str
    resumed: bool  # the run was open in the journal: this is a rerun

    @classmethod
    def open(cls, tray: Path, kind: str, run: str | None = None, new_run: bool = False) -> TrayJournal:
        if kind not in KINDS:
            raise JournalError(f"unknown tray run kind {kind!r}")
        path = tray.with_name(f"{tray.name}.{kind}.journal")
        wanted = None if run is None else parse_run(run)
        if not new_run:
            open_run = cls._open_run(path)
            if open_run is not None and wanted in (None, open_run):
                return cls(path, kind, open_run, resumed=True)
        journal = cls(path, kind, wanted or new_run_id(kind), resumed=False)
        journal._start(tray)
        return journal

    @staticmethod
    def _open_run(path: Path) -> str | None:
        """The run of the journal at `path` while it is open (not finished); None if there is none."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise JournalError(f"cannot read tray journal {path}: {exc}") from exc
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or not isinstance(header.get("run"), str):
            raise JournalError(
                f"tray journal {path} has no readable header: remove it, or give --new-run to start a new run"
            )
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a crash while writing it
            if isinstance(entry, dict) and "finished" in entry:
                return None
        return parse_run(header["run"])

    def _start(self, tray: Path) -> None:
        header = {"run": self.run, "kind": self.kind, "tray": tray.name, "started": _now()}
        temporary = self.path.with_name(self.path.name + ".new")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                out.write(json.dumps(header) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            _sync_directory(self.path.parent)
        except OSError as exc:
            raise JournalError(f"cannot write tray journal {self.path}: {exc}") from exc

    def request_id(self, device_id: bytes) -> str:
        return request_id(self.run, device_id)

    def record(self, device_id: bytes, status: str, reason: str) -> None:
        self._append(
            {
                "device": bytes(device_id).hex(),
                "requestId": self.request_id(device_id),
                "status": status,
                "reason": reason,
            }
        )

    def finish(self) -> None:
        self._append({"finished": _now()})

    def _append(self, entry: dict[str, str]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise JournalError(f"cannot write tray journal {self.path}: {exc}") from exc


def run_tray(
    journal: TrayJournal, device_ids: Iterable[bytes], one: Callable[[bytes, str], R], done: str
) -> list[R]:
    """`one(device, request id)` for each meter in turn, journalled as it ends; the run is finished when every
    result's status is `done`."""
    results: list[R] = []
    for device_id in device_ids:
        result = one(device_id, journal.request_id(device_id))
        journal.record(device_id, result.status, result.reason)
        results.append(result)
    if results and all(r.status == done for r in results):
        journal.finish()
    return results


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
