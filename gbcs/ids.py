"""EUI-64 entity and device identifiers (8 bytes) as used in Grouping Headers and SMKI certificates."""

from __future__ import annotations

from vdno.gbcs.errors import DecodeError

EUI64_LEN = 8
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_eui64(text: str) -> bytes:
    """'90B3D51F30020000', '90-b3-d5-...' or '90:b3:...' -> 8 bytes.

    DecodeError naming the input otherwise."""
    if not isinstance(text, str):
        raise DecodeError(f"EUI-64 must be text, got {type(text).__name__}")
    if len(text) == 2 * EUI64_LEN and text.isascii() and text.isalnum():  # the common form, checked fast
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass  # not hex: the check below names the input
    digits = text.strip()
    for sep in ("-", ":", " "):
        digits = digits.replace(sep, "")
    if len(digits) != 2 * EUI64_LEN or any(c not in _HEX for c in digits):
        raise DecodeError(f"EUI-64 {text!r} is not 16 hex digits (optionally separated by '-', ':' or ' ')")
    return bytes.fromhex(digits)


def eui64_hex(value: bytes) -> str:
    """8 bytes -> lower-case 16 hex digits (the keystore file naming)."""
    return check_eui64(bytes(value), "EUI-64").hex()


def check_eui64(value: bytes, what: str) -> bytes:
    """Return value if it is exactly 8 bytes, else DecodeError naming `what`."""
    if len(value) != EUI64_LEN:
        raise DecodeError(f"{what} must be 8 bytes (EUI-64), got {len(value)}")
    return value
