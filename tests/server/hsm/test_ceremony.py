"""TokenKeyCeremony (server/hsm/ceremony.py) on a SoftHSM token: key pairs named by id alone."""

from __future__ import annotations

import hashlib

import pytest

from vdno.server.domain.errors import KeyNotInCustody
from vdno.server.hsm.ceremony import TokenKeyCeremony
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken


def test_a_key_pair_named_by_id_alone_is_destroyed(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin) as signer:
        ceremony = TokenKeyCeremony(signer, hsm_token.label)
        kept = ceremony.generate_key_pair("kept", b"\x0b")
        ceremony.generate_key_pair("by-id", b"\x1d")
        by_id = "pkcs11:id=%1d;type=private"
        digest = hashlib.sha256(b"x").digest()
        assert len(signer.sign_digest(by_id, digest)) == 64
        assert ceremony.destroy_key_pair(by_id) is True
        with pytest.raises(KeyNotInCustody, match="no private EC key with id 1d"):
            signer.sign_digest(by_id, digest)
        with pytest.raises(KeyNotInCustody, match="no public EC key labelled 'by-id'"):
            ceremony.public_key(f"pkcs11:token={hsm_token.label};object=by-id")
        assert ceremony.destroy_key_pair(by_id) is False
        assert ceremony.public_key(kept.uri) == kept.public_key  # the other pair is untouched
