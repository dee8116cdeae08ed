"""RFC 7512 PKCS#11 URIs, as used in configuration to name the token and the signing keys.

    pkcs11:token=vdno;object=no-dno-a-gen1;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so

Only the attributes vdno uses are accepted; anything else (including `pin-value`: PINs come from a
file or the environment, never from a configuration string) is refused with `InvalidRequest` naming
the offending part. `str(uri)` renders the canonical form; `parse_pkcs11_uri(str(u)) == u`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from vdno.server.domain.errors import InvalidRequest

SCHEME = "pkcs11:"

# Object classes of RFC 7512 §2.3 ("type").
OBJECT_TYPES = frozenset({"private", "public", "cert", "secret-key", "data"})

# Path attributes in the canonical rendering order; `id` is bytes, the others UTF-8 text.
_PATH_ATTRS = ("token", "manufacturer", "serial", "model", "object", "type", "id")
_QUERY_ATTRS = ("module-path", "pin-source")
# Standard attributes vdno does not use: named in the error so the operator knows it is not a typo.
_UNSUPPORTED = frozenset(
    {
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-manufacturer",
        "slot-description",
        "slot-id",
        "module-name",
    }
)

# RFC 7512 §2.3 character classes.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_RES_AVAIL = frozenset(":[]@!$'()*+,=")
_PATH_CHARS = _UNRESERVED | _RES_AVAIL | {"&"}
_QUERY_CHARS = _UNRESERVED | _RES_AVAIL | {"/", "?", "|"}
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI. Absent attributes are None."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in OBJECT_TYPES:
            raise InvalidRequest(
                f"PKCS#11 URI: unknown object type {self.type!r} (expected one of {sorted(OBJECT_TYPES)})"
            )

    def __str__(self) -> str:
        path: list[str] = []
        for name in _PATH_ATTRS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "id":
                path.append("id=" + "".join(f"%{b:02x}" for b in value))
            else:
                path.append(f"{name}={_encode(value, _PATH_CHARS)}")
        query: list[str] = []
        for name in _QUERY_ATTRS:
            value = getattr(self, name.replace("-", "_"))
            if value is not None:
                query.append(f"{name}={_encode(value, _QUERY_CHARS)}")
        rendered = SCHEME + ";".join(path)
        if query:
            rendered += "?" + "&".join(query)
        return rendered


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; raise InvalidRequest naming the bad part."""
    if not isinstance(text, str):
        raise InvalidRequest("PKCS#11 URI: expected a string")
    if text[: len(SCHEME)].lower() != SCHEME:
        raise InvalidRequest("PKCS#11 URI: must start with 'pkcs11:'")
    rest = text[len(SCHEME) :]
    path_part, sep, query_part = rest.partition("?")
    if sep and not query_part:
        raise InvalidRequest("PKCS#11 URI: empty query after '?'")

    values: dict[str, str | bytes] = {}
    if path_part:
        for item in path_part.split(";"):
            name, value = _split_attr(item, "path")
            if name not in _PATH_ATTRS:
                _refuse_name(name, "path")
            if name in values:
                raise InvalidRequest(f"PKCS#11 URI: path attribute {name!r} given twice")
            raw = _decode(value, _PATH_CHARS, name)
            values[name] = raw if name == "id" else _utf8(raw, name)
    if query_part:
        for item in query_part.split("&"):
            name, value = _split_attr(item, "query")
            if name not in _QUERY_ATTRS:
                _refuse_name(name, "query")
            if name in values:
                raise InvalidRequest(f"PKCS#11 URI: query attribute {name!r} given twice")
            values[name] = _utf8(_decode(value, _QUERY_CHARS, name), name)

    def text_of(key: str) -> str | None:
        value = values.get(key)
        assert value is None or isinstance(value, str)
        return value

    id_value = values.get("id")
    assert id_value is None or isinstance(id_value, bytes)
    return Pkcs11Uri(
        token=text_of("token"),
        manufacturer=text_of("manufacturer"),
        serial=text_of("serial"),
        model=text_of("model"),
        object=text_of("object"),
        id=id_value,
        type=text_of("type"),
        module_path=text_of("module-path"),
        pin_source=text_of("pin-source"),
    )


def _split_attr(item: str, where: str) -> tuple[str, str]:
    name, eq, value = item.partition("=")
    if not eq or not name:
        raise InvalidRequest(f"PKCS#11 URI: {where} component {item[:40]!r} is not name=value")
    return name.lower(), value


def _refuse_name(name: str, where: str) -> None:
    if name == "pin-value":
        raise InvalidRequest(
            "PKCS#11 URI: 'pin-value' is not allowed; PINs come from a file or the environment"
        )
    if name in _UNSUPPORTED or name.startswith("x-"):
        raise InvalidRequest(f"PKCS#11 URI: {where} attribute {name!r} is not supported by vdno")
    raise InvalidRequest(f"PKCS#11 URI: unknown {where} attribute {name!r}")


def _decode(value: str, allowed: frozenset[str], name: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in _HEX for c in pair):
                raise InvalidRequest(f"PKCS#11 URI: bad percent-encoding in attribute {name!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        if ch not in allowed:
            raise InvalidRequest(
                f"PKCS#11 URI: character {ch!r} must be percent-encoded in attribute {name!r}"
            )
        out.append(ord(ch))
        i += 1
    return bytes(out)


def _utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"PKCS#11 URI: attribute {name!r} is not valid UTF-8") from exc


def _encode(value: str, allowed: frozenset[str]) -> str:
    out: list[str] = []
    for ch in value:
        if ch in allowed and ch != "%":
            out.append(ch)
        else:
            out.extend(f"%{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)
