"""Minimal ASN.1 TLV reader/writer for the GBCS payloads.

Writer: DER (definite minimal lengths, minimal two's-complement INTEGERs).
Reader: lenient BER — accepts non-minimal length forms (e.g. ``30 82 00 83``), rejects indefinite lengths,
multi-byte (high-number) tags, truncation and trailing bytes with DecodeError naming the field and offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from vdno.gbcs.errors import DecodeError, EncodeError

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30

_TAG_NAMES = {
    TAG_INTEGER: "INTEGER",
    TAG_BIT_STRING: "BIT STRING",
    TAG_OCTET_STRING: "OCTET STRING",
    TAG_NULL: "NULL",
    TAG_OID: "OBJECT IDENTIFIER",
    TAG_ENUMERATED: "ENUMERATED",
    TAG_GENERALIZED_TIME: "GeneralizedTime",
    TAG_SEQUENCE: "SEQUENCE",
}

_MAX_LEN_BYTES = 4


class Tlv(NamedTuple):
    """One element as read. A NamedTuple: immutable, and cheap to build on the hot decode path."""

    tag: int
    content: bytes
    offset: int  # absolute offset of the tag byte (relative to the outermost buffer decoded)
    content_offset: int  # absolute offset of the first content byte
    raw: bytes  # the exact TLV bytes as received

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def read_tlv(data: bytes, pos: int, what: str, base: int = 0) -> tuple[Tlv, int]:
    """Read one TLV at data[pos]; returns (tlv, position after it). Offsets in messages are base+pos."""
    if type(data) is not bytes:  # a bytearray or memoryview: a Tlv never aliases mutable input
        data = bytes(data)
    start = pos
    size = len(data)
    if pos + 1 >= size:
        if pos >= size:
            raise DecodeError(f"{what}: truncated, expected a tag at offset {base + pos}")
        raise DecodeError(f"{what}: truncated, expected a length at offset {base + pos + 1}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DecodeError(f"{what}: unsupported high-number tag {tag:#04x} at offset {base + pos}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DecodeError(f"{what}: indefinite length not allowed at offset {base + pos - 1}")
    else:
        n = first & 0x7F
        if n > _MAX_LEN_BYTES:
            raise DecodeError(f"{what}: length of {n} bytes too long at offset {base + pos - 1}")
        if pos + n > size:
            raise DecodeError(f"{what}: truncated length at offset {base + pos - 1}")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > size:
        raise DecodeError(
            f"{what}: value of {length} bytes at offset {base + pos} runs past the end "
            f"({size - pos} bytes left)"
        )
    return Tlv(tag, data[pos:end], base + start, base + pos, data[start:end]), end


def read_single(data: bytes, what: str, tag: int | None = None, base: int = 0) -> Tlv:
    """Exactly one TLV spanning all of data, with the given tag unless tag is None."""
    item, end = read_tlv(data, 0, what, base)
    if end != len(data):
        raise DecodeError(f"{what}: {len(data) - end} trailing bytes at offset {base + end}")
    if tag is not None and item.tag != tag:
        name = _TAG_NAMES.get(tag, "tag")
        raise DecodeError(f"{what}: expected {name} ({tag:02x}), got {item.tag:#04x} at offset {item.offset}")
    return item


def read_children(tlv: Tlv, what: str) -> list[Tlv]:
    """The TLVs that make up the content of a constructed TLV."""
    if not tlv.constructed:
        raise DecodeError(f"{what}: tag {tlv.tag:#04x} at offset {tlv.offset} is not constructed")
    items: list[Tlv] = []
    pos = 0
    while pos < len(tlv.content):
        item, pos = read_tlv(tlv.content, pos, what, tlv.content_offset)
        items.append(item)
    return items


def read_sequence_of(tlv: Tlv, what: str, tag: int) -> list[Tlv]:
    """The elements of a constructed TLV holding a SEQUENCE OF: every one must carry `tag`."""
    items = read_children(tlv, what)
    for item in items:
        if item.tag != tag:
            raise DecodeError(
                f"{what}: element tag {item.tag:#04x} (expected {tag:#04x}) at offset {item.offset}"
            )
    return items


def read_sequence(data: bytes, what: str) -> SeqReader:
    """A reader over the children of the one SEQUENCE that must span all of data."""
    return SeqReader(read_single(data, what, TAG_SEQUENCE), what)


class SeqReader:
    """Walks the children of a constructed TLV in order."""

    def __init__(self, tlv: Tlv, what: str) -> None:
        self.what = what
        self.items = read_children(tlv, what)
        self.index = 0
        self.end_offset = tlv.content_offset + len(tlv.content)

    def peek_tag(self) -> int | None:
        if self.index < len(self.items):
            return self.items[self.index].tag
        return None

    def next(self, tag: int | tuple[int, ...], field: str) -> Tlv:
        tags = (tag,) if isinstance(tag, int) else tag
        if self.index >= len(self.items):
            raise DecodeError(f"{self.what}: missing {field} at offset {self.end_offset}")
        item = self.items[self.index]
        if item.tag not in tags:
            want = "/".join(f"{t:#04x}" for t in tags)
            raise DecodeError(
                f"{self.what}: {field} expected tag {want}, got {item.tag:#04x} at offset {item.offset}"
            )
        self.index += 1
        return item

    def optional(self, tag: int, field: str) -> Tlv | None:
        if self.peek_tag() == tag:
            return self.next(tag, field)
        return None

    def done(self) -> None:
        if self.index < len(self.items):
            item = self.items[self.index]
            raise DecodeError(f"{self.what}: unexpected element tag {item.tag:#04x} at offset {item.offset}")


# --- writer -------------------------------------------------------------------------------------


def der_length(n: int) -> bytes:
    if n < 0:
        raise EncodeError(f"negative length {n}")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def int_content(value: int) -> bytes:
    """Minimal two's-complement INTEGER contents."""
    length = (value + (value < 0)).bit_length() // 8 + 1
    return value.to_bytes(length, "big", signed=True)


def der_int(value: int, tag: int = TAG_INTEGER) -> bytes:
    return tlv(tag, int_content(value))


def sequence(*parts: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(parts))


def single_bit_string(bit: int) -> bytes:
    """DER BIT STRING with exactly bit number `bit` set (0 = most significant bit)."""
    if not 0 <= bit <= 63:
        raise EncodeError(f"bit number {bit} out of range")
    nbytes = bit // 8 + 1
    value = bytearray(nbytes)
    value[bit // 8] = 0x80 >> (bit % 8)
    unused = 7 - bit % 8
    return tlv(TAG_BIT_STRING, bytes([unused]) + bytes(value))


def generalized_time(value: datetime) -> bytes:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    if not 1 <= value.year <= 9999:
        raise EncodeError(f"year {value.year} cannot be a GeneralizedTime")
    return tlv(TAG_GENERALIZED_TIME, value.strftime("%Y%m%d%H%M%S").encode("ascii") + b"Z")


def check_der_element(data: bytes, what: str, tag: int = TAG_SEQUENCE) -> bytes:
    """For encoding: data must be exactly one TLV with the given tag (e.g. a Certificate)."""
    try:
        read_single(data, what, tag)
    except DecodeError as exc:
        raise EncodeError(str(exc)) from exc
    return data


# --- reader helpers -----------------------------------------------------------------------------


def decode_int(item: Tlv, field: str) -> int:
    if not item.content:
        raise DecodeError(f"{field}: empty INTEGER at offset {item.offset}")
    if len(item.content) > 16:
        raise DecodeError(f"{field}: INTEGER of {len(item.content)} bytes too large at offset {item.offset}")
    return int.from_bytes(item.content, "big", signed=True)


def decode_single_bit(item: Tlv, field: str) -> int:
    """BIT STRING with exactly one bit set -> its bit number (0 = MSB of the first byte)."""
    content = item.content
    if len(content) < 2:
        raise DecodeError(f"{field}: BIT STRING too short at offset {item.offset}")
    unused = content[0]
    if unused > 7:
        raise DecodeError(f"{field}: BIT STRING unused-bits {unused} > 7 at offset {item.offset}")
    bits = content[1:]
    value = int.from_bytes(bits, "big")
    total = len(bits) * 8
    if value & ((1 << unused) - 1):
        raise DecodeError(f"{field}: BIT STRING has bits set in unused positions at offset {item.offset}")
    if value == 0 or value & (value - 1):
        raise DecodeError(f"{field}: BIT STRING must have exactly one bit set at offset {item.offset}")
    return total - value.bit_length()


def decode_generalized_time(item: Tlv, field: str) -> datetime:
    try:
        text = item.content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{field}: GeneralizedTime not ASCII at offset {item.offset}") from exc
    if text.endswith("Z"):
        text = text[:-1]
    if "." in text:
        text = text.split(".", 1)[0]
    if len(text) != 14 or not text.isdigit():
        raise DecodeError(f"{field}: GeneralizedTime {item.content!r} not YYYYMMDDHHMMSSZ at {item.offset}")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise DecodeError(f"{field}: invalid GeneralizedTime {text!r} at offset {item.offset}") from exc
