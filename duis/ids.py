"""DUIS identifiers: EUI-64 in the hyphenated text form and the RequestID originator:target:counter."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vdno.duis.errors import DuisError

EUI_LEN = 8
MAX_COUNTER = 2**64 - 1

# DUIS XSD sr:EUI: eight hyphen-separated hex octets, either case.
_EUI = re.compile(r"[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){7}")
# DUIS XSD sr:RequestIDType: EUI:EUI:counter, the counter decimal without leading zeros.
_REQUEST_ID = re.compile(rf"({_EUI.pattern}):({_EUI.pattern}):(0|[1-9][0-9]{{0,19}})")


def format_eui(value: bytes) -> str:
    """8 bytes -> '90-B3-D5-1F-30-02-00-00' (upper case). DuisError unless exactly 8 bytes."""
    if not isinstance(value, bytes | bytearray) or len(value) != EUI_LEN:
        raise DuisError(f"an EUI-64 must be {EUI_LEN} bytes, got {value!r}")
    return "-".join(f"{octet:02X}" for octet in value)


def parse_eui(text: str) -> bytes:
    """'90-B3-D5-1F-30-02-00-00' (either case) -> 8 bytes. DuisError naming the text otherwise."""
    if not isinstance(text, str) or not _EUI.fullmatch(text):
        raise DuisError(
            f"EUI {text!r} is not eight hyphen-separated hex octets (e.g. 90-B3-D5-1F-30-02-00-00)"
        )
    return bytes.fromhex(text.replace("-", ""))


@dataclass(frozen=True)
class RequestId:
    """DUIS RequestID: the originator's EUI, the target's EUI and the originator's counter (0..2**64-1)."""

    originator: bytes
    target: bytes
    counter: int

    def __post_init__(self) -> None:
        for what, value in (("originator", self.originator), ("target", self.target)):
            if not isinstance(value, bytes) or len(value) != EUI_LEN:
                raise DuisError(f"RequestID {what} must be {EUI_LEN} bytes (an EUI-64), got {value!r}")
        if isinstance(self.counter, bool) or not isinstance(self.counter, int):
            raise DuisError(f"RequestID counter must be an int, got {type(self.counter).__name__}")
        if not 0 <= self.counter <= MAX_COUNTER:
            raise DuisError(f"RequestID counter {self.counter} is outside 0..2**64-1")

    @classmethod
    def parse(cls, text: str) -> RequestId:
        """'90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0:1200' -> RequestId. DuisError otherwise."""
        match = _REQUEST_ID.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise DuisError(
                f"RequestID {text!r} is not originator-EUI:target-EUI:counter "
                "(e.g. 90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0:1200)"
            )
        return cls(parse_eui(match.group(1)), parse_eui(match.group(2)), int(match.group(3)))

    def __str__(self) -> str:
        return f"{format_eui(self.originator)}:{format_eui(self.target)}:{self.counter}"
