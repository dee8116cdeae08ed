"""The key ceremony in the token (the KeyCeremony port of server/domain/custody.py): generate a generation's
key pairs, read their attributes back, have them sign certificate requests, delete them. Every token call
runs on the server's signer session, serialised with its signing (python-pkcs11 must not be entered by two
threads at once)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from vdno.server.domain.custody import GeneratedKey
from vdno.server.domain.errors import HsmUnavailable
from vdno.server.hsm import keys as hsm_keys
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.uri import Pkcs11Uri, parse_pkcs11_uri


class TokenKeyCeremony:
    def __init__(self, signer: Pkcs11Signer, token_label: str) -> None:
        self._signer = signer
        self._token = token_label

    def _uri(self, label: str) -> str:
        return str(Pkcs11Uri(token=self._token, object=label, type="private"))

    def generate_key_pair(self, label: str, key_id: bytes) -> GeneratedKey:
        def job(session: Any) -> GeneratedKey:
            pair = hsm_keys.ensure_keypair(session, label, key_id)
            attributes = hsm_keys.read_private_key_attributes(session, label=label)
            hsm_keys.require_custody(attributes, repr(label))
            facts = {
                k: v
                for k, v in dataclasses.asdict(attributes).items()
                if isinstance(v, bool) or k == "key_type"
            }
            facts["created"] = pair.created
            spki = pair.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            return GeneratedKey(self._uri(label), spki, facts)

        return self._signer.run(job, "generating a key pair")

    def public_key(self, key_uri: str) -> bytes:
        return self._signer.public_key(key_uri).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def certificate_request(self, key_uri: str, subject: x509.Name) -> bytes:
        uri = parse_pkcs11_uri(key_uri)
        return self._signer.run(
            lambda session: hsm_keys.sign_csr(session, subject, uri.object, uri.id),
            "signing a certificate request",
        )

    def destroy_key_pair(self, key_uri: str) -> bool:
        uri = parse_pkcs11_uri(key_uri)

        def job(session: Any) -> bool:
            template: dict[Attribute, Any] = {}
            if uri.object is not None:
                template[Attribute.LABEL] = uri.object
            if uri.id is not None:
                template[Attribute.ID] = uri.id
            found = False
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                try:
                    for key in list(session.get_objects({**template, Attribute.CLASS: object_class})):
                        key.destroy()
                        found = True
                except p11e.PKCS11Error as exc:
                    raise HsmUnavailable(f"the token could not delete the keys {uri.object!r}") from exc
            return found

        deleted = self._signer.run(job, "deleting a key pair")
        self._signer.forget(key_uri)
        return deleted
