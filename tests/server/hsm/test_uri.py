from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdno.server.domain.errors import InvalidRequest
from vdno.server.hsm.uri import Pkcs11Uri, parse_pkcs11_uri


def test_parse_all_supported_attributes() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:token=vdno%20main;manufacturer=SoftHSM%20project;serial=abc123;model=SoftHSM%20v2;"
        "object=no-dno-a;id=%01%02%ff;type=private"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin"
    )
    assert uri == Pkcs11Uri(
        token="vdno main",
        manufacturer="SoftHSM project",
        serial="abc123",
        model="SoftHSM v2",
        object="no-dno-a",
        id=b"\x01\x02\xff",
        type="private",
        module_path="/usr/lib/softhsm/libsofthsm2.so",
        pin_source="file:/run/secrets/pin",
    )


def test_render_is_canonical_and_round_trips() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:type=private;id=AB;object=k%3b1;token=t?pin-source=file:/p&module-path=/m.so"
    )
    assert (
        str(uri) == "pkcs11:token=t;object=k%3b1;type=private;id=%41%42?module-path=/m.so&pin-source=file:/p"
    )
    assert parse_pkcs11_uri(str(uri)) == uri
    assert uri.id == b"AB"
    assert str(Pkcs11Uri()) == "pkcs11:"
    assert parse_pkcs11_uri("pkcs11:") == Pkcs11Uri()


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(
    token=st.none() | _text,
    obj=st.none() | _text,
    key_id=st.none() | st.binary(max_size=12),
    kind=st.none() | st.sampled_from(["private", "public", "cert", "secret-key", "data"]),
    module=st.none() | _text,
)
def test_round_trip_property(
    token: str | None, obj: str | None, key_id: bytes | None, kind: str | None, module: str | None
) -> None:
    uri = Pkcs11Uri(token=token, object=obj, id=key_id, type=kind, module_path=module)
    assert parse_pkcs11_uri(str(uri)) == uri


def test_pin_value_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidRequest, match="pin-value") as info:
        parse_pkcs11_uri("pkcs11:token=t;object=k?pin-value=S3cretPin")
    assert "S3cretPin" not in str(info.value)
    with pytest.raises(InvalidRequest, match="pin-value"):
        parse_pkcs11_uri("pkcs11:token=t;pin-value=S3cretPin")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("pkcs11:object=a%4", "percent-encoding"),
        ("pkcs11:object=a%zz", "percent-encoding"),
        ("pkcs11:id=%0g", "percent-encoding"),
        ("pkcs11:type=secret", "unknown object type"),
        ("pkcs11:object=a;object=b", "given twice"),
        ("pkcs11:colour=blue", "unknown path attribute 'colour'"),
        ("pkcs11:slot-id=1", "not supported"),
        ("pkcs11:object", "not name=value"),
        ("pkcs11:object=a b", "must be percent-encoded"),
        ("pkcs11:object=a?", "empty query"),
        ("pkcs11:object=a?pin-source=file:/a&pin-source=file:/b", "query attribute 'pin-source' given twice"),
        ("pkcs11:object=a?module-name=softhsm", "not supported"),
        ("pkcs11:object=%ff", "UTF-8"),
        ("pkcs12:object=a", "must start with 'pkcs11:'"),
        ("object=a", "must start with 'pkcs11:'"),
    ],
)
def test_bad_uris_name_the_bad_part(text: str, named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        parse_pkcs11_uri(text)


def test_a_uri_must_be_text() -> None:
    with pytest.raises(InvalidRequest, match="expected a string"):
        parse_pkcs11_uri(b"pkcs11:object=a")  # type: ignore[arg-type]
