"""Helpers of the hsm tests: waiting for recovery, taking a SoftHSM token away, counting C_Login calls."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from vdno.server.domain.errors import HsmUnavailable
from vdno.server.hsm.softhsm import SoftHsmToken

T = TypeVar("T")


def wait_for(call: Callable[[], T], within: float, poll: float = 0.01) -> T:
    """call() once it stops raising HsmUnavailable; fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except HsmUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(poll)


def token_directory(token: SoftHsmToken) -> Path:
    """SoftHSM's directory of this token (one per token, named by a UUID, under the token dir)."""
    [found] = [
        p.parent for p in token.token_dir.glob("*/token.object") if token.label.encode() in p.read_bytes()
    ]
    return found


@contextlib.contextmanager
def token_taken_away(token: SoftHsmToken) -> Iterator[None]:
    """The token's directory moved out of SoftHSM's token dir (the token is removed) until the block
    ends, then put back."""
    directory = token_directory(token)
    away = token.token_dir.parent / f"away-{directory.name}"
    shutil.move(directory, away)
    try:
        yield
    finally:
        shutil.move(away, directory)


class LoginCounter:
    """Counts the C_Login calls of this process; the real C_Login still runs (the `count_logins` fixture
    wraps server.hsm._cki.login with it)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, real: Callable[[str, int, str], None]) -> Callable[[str, int, str], None]:
        def login(path: str, session_handle: int, pin: str) -> None:
            self.calls += 1
            real(path, session_handle, pin)

        return login
