"""Reading and writing DUIS XML documents: defused parsing, a schema-order child walker, typed leaf values.

Parsing refuses DTDs (hence entity declarations), external references and documents over
MAX_DOCUMENT_BYTES; every refusal is a DuisError naming the element or attribute concerned. Documents are
written with the `sr` and `ds` prefixes declared on the root, `schemaVersion="5.4"`, an XML declaration
and UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import defusedxml
import defusedxml.ElementTree as DefusedET

from vdno.duis.errors import DuisError

SR_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SCHEMA_VERSION = "5.4"
MAX_DOCUMENT_BYTES = 1 << 20

_PREFIXES = {SR_NS: "sr", DS_NS: "ds"}
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INTEGER = re.compile(r"\+?[0-9]+")
_XML_SPACE = re.compile(r"[ \t\r\n]+")
# xs:dateTime; fractional seconds of any length, optional time zone (DUIS times without one are UTC).
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)


def qualified(tag: str) -> str:
    """'{ns}Name' -> 'sr:Name' / 'ds:Name' for the known namespaces, else the Clark form as is."""
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        prefix = _PREFIXES.get(namespace)
        if prefix is not None:
            return f"{prefix}:{local}"
    return tag


def sr_tag(name: str) -> str:
    return f"{{{SR_NS}}}{name}"


# --- parsing ------------------------------------------------------------------------------------


def parse_document(data: bytes, root_name: str) -> ET.Element:
    """Parse untrusted bytes; the root must be sr:<root_name> with a decimal schemaVersion attribute."""
    if not isinstance(data, bytes | bytearray):
        raise DuisError(f"a DUIS document must be bytes, got {type(data).__name__}")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DuisError(f"document is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit")
    try:
        parsed: object = DefusedET.fromstring(
            bytes(data), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DTDForbidden as exc:
        raise DuisError(
            f"document has a DOCTYPE ({exc.name!r}): DTDs and entity declarations are refused"
        ) from exc
    except defusedxml.EntitiesForbidden as exc:
        raise DuisError(f"document declares entity {exc.name!r}: entities are refused") from exc
    except defusedxml.ExternalReferenceForbidden as exc:
        raise DuisError(
            f"document references external {exc.sysid!r}: external references are refused"
        ) from exc
    except defusedxml.DefusedXmlException as exc:
        raise DuisError(f"document refused: {exc}") from exc
    except ET.ParseError as exc:
        raise DuisError(f"document is not well-formed XML: {exc}") from exc
    except LookupError as exc:  # the XML declaration names an encoding the parser does not know
        raise DuisError(f"document declares an unknown encoding: {exc}") from exc
    if not isinstance(parsed, ET.Element):
        raise DuisError("document has no root element")
    expected = sr_tag(root_name)
    if parsed.tag != expected:
        raise DuisError(f"root element is {qualified(parsed.tag)}, expected sr:{root_name}")
    version = parsed.get("schemaVersion")
    if version is None:
        raise DuisError(f"sr:{root_name} lacks the schemaVersion attribute")
    if not _DECIMAL.fullmatch(version.strip()):
        raise DuisError(f"sr:{root_name} schemaVersion {version!r} is not a decimal")
    return parsed


class Children:
    """The child elements of one element, taken in schema order; `path` names the element in errors."""

    def __init__(self, parent: ET.Element, path: str) -> None:
        self.path = path
        if (parent.text or "").strip():
            raise DuisError(f"{path} holds text where only child elements are allowed")
        for child in parent:
            if (child.tail or "").strip():
                raise DuisError(f"{path} holds text after {qualified(child.tag)}")
        self._items = list(parent)
        self._pos = 0

    def _next_tag(self) -> str | None:
        return self._items[self._pos].tag if self._pos < len(self._items) else None

    def next_name(self) -> str | None:
        """The qualified name of the next child (e.g. 'sr:PreCommand'), None at the end."""
        tag = self._next_tag()
        return None if tag is None else qualified(tag)

    def optional(self, name: str, namespace: str = SR_NS) -> ET.Element | None:
        if self._next_tag() != f"{{{namespace}}}{name}":
            return None
        item = self._items[self._pos]
        self._pos += 1
        return item

    def required(self, name: str, namespace: str = SR_NS) -> ET.Element:
        item = self.optional(name, namespace)
        if item is None:
            found = self.next_name()
            where = f" (found {found})" if found is not None else ""
            raise DuisError(f"{self.path} lacks {_PREFIXES.get(namespace, namespace)}:{name}{where}")
        return item

    def repeated(self, name: str, at_least: int, at_most: int) -> list[ET.Element]:
        items = []
        while (item := self.optional(name)) is not None:
            items.append(item)
        if not at_least <= len(items) <= at_most:
            raise DuisError(
                f"{self.path} holds {len(items)} sr:{name} elements, expected {at_least} to {at_most}"
            )
        return items

    def done(self) -> None:
        found = self.next_name()
        if found is not None:
            raise DuisError(f"{self.path}: unexpected element {found}")


def leaf_text(element: ET.Element, path: str) -> str:
    """Text of an element that must hold no child elements; whitespace collapsed at the ends."""
    if len(element):
        raise DuisError(f"{path} holds element {qualified(element[0].tag)} where only text is allowed")
    return (element.text or "").strip()


def read_base64(element: ET.Element, path: str) -> bytes:
    """xs:base64Binary (whitespace allowed between characters); DuisError naming path when empty or bad."""
    text = _XML_SPACE.sub("", leaf_text(element, path))
    if not text:
        raise DuisError(f"{path} is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DuisError(f"{path} is not valid base64: {exc}") from exc


def read_int(element: ET.Element, path: str, low: int, high: int) -> int:
    text = leaf_text(element, path)
    if not _INTEGER.fullmatch(text):
        raise DuisError(f"{path} {text!r} is not a non-negative integer")
    value = int(text)
    if not low <= value <= high:
        raise DuisError(f"{path} {value} is outside {low}..{high}")
    return value


def read_bool(element: ET.Element, path: str) -> bool:
    text = leaf_text(element, path)
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise DuisError(f"{path} {text!r} is not an xs:boolean (true, false, 1, 0)")


def read_date_time(element: ET.Element, path: str) -> datetime:
    """xs:dateTime -> aware datetime; a value without a time zone is taken as UTC (DUIS times are UTC)."""
    text = leaf_text(element, path)
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise DuisError(f"{path} {text!r} is not an xs:dateTime (e.g. 2025-10-01T12:00:00.000Z)")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = (match.group(7) or "")[:6].ljust(6, "0")
    zone = match.group(8)
    tz = UTC
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if offset > timedelta(hours=14):
            raise DuisError(f"{path} {text!r} has a time-zone offset beyond 14:00")
        tz = timezone(sign * offset)
    try:
        return datetime(year, month, day, hour, minute, second, int(fraction), tzinfo=tz)
    except ValueError as exc:
        raise DuisError(f"{path} {text!r} is not a valid date and time: {exc}") from exc


# --- writing ------------------------------------------------------------------------------------


def new_root(name: str) -> ET.Element:
    """sr:<name> declaring the sr and ds prefixes, schemaVersion 5.4. Prefixed tags are written verbatim,
    so no namespace registration (process-wide state in ElementTree) is needed."""
    return ET.Element(f"sr:{name}", {"xmlns:sr": SR_NS, "xmlns:ds": DS_NS, "schemaVersion": SCHEMA_VERSION})


def add(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    """Append sr:<name> (with text, when given) to parent."""
    element = ET.SubElement(parent, f"sr:{name}")
    if text is not None:
        element.text = text
    return element


def base64_text(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def date_time_text(when: datetime, what: str) -> str:
    """Aware datetime -> UTC xs:dateTime with milliseconds (microseconds when they are not whole ms)."""
    check_aware(when, what)
    utc = when.astimezone(UTC)
    micro = utc.microsecond
    fraction = f"{micro // 1000:03d}" if micro % 1000 == 0 else f"{micro:06d}"
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{fraction}Z"


def check_aware(when: object, what: str) -> None:
    if not isinstance(when, datetime):
        raise DuisError(f"{what} must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise DuisError(f"{what} must be timezone-aware (DUIS times are UTC)")


def serialise(root: ET.Element) -> bytes:
    """UTF-8 bytes with an XML declaration, indented two spaces."""
    ET.indent(root, space="  ")
    text: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return text + b"\n"
