"""vdno-bench inspect on the RTDS vectors: every file decodes and verifies; tampering and missing keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rtds_vectors import vectors_path
from typer.testing import CliRunner

from vdno.client.cli import app
from vdno.client.inspect import (
    EXIT_BAD_SIGNATURE,
    EXIT_DECODE,
    EXIT_MISSING_KEY,
    EXIT_UNVERIFIED,
    inspect_bytes,
    load_input,
)

ACB = "90b3d51f30000002"
VECTORS = vectors_path()
NO_BY_NO = "6.15.1_CS02bNOByNO/CS02bNOByNO_6.15.1_SUCCESS_COMMAND_GBCS.HEX"


def vector_files() -> list[Path]:
    return sorted(VECTORS.glob("*/*.HEX"))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def keystore(vectors_dir: Path) -> Path:
    return vectors_dir / "keystore"


def test_vector_set_present(vectors_dir: Path) -> None:
    assert len(list(vectors_dir.glob("*/*.HEX"))) == 40


@pytest.mark.parametrize("path", vector_files(), ids=lambda p: p.name)
def test_every_vector_verifies_with_json(path: Path, keystore: Path) -> None:
    code, out, err = run("inspect", str(path), "--keystore", str(keystore), "--acb", ACB, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["decoded"] is True
    header = doc["groupingHeader"]
    for name in ("craFlag", "originatorCounter", "businessOriginatorId", "businessTargetId", "messageCode"):
        assert name in header
    assert doc["payload"]
    verification = doc["verification"]
    if "PRECOMMAND" in path.name:
        assert verification["signature"]["status"] == "unsigned"
    elif doc["frame"]["signatureLength"] == 0:
        assert verification["mac"]["status"] == "valid"
    else:
        assert verification["signature"]["status"] == "valid"
    if doc["frame"]["macHeader"] is not None:
        assert verification["mac"]["status"] == "valid"


@pytest.mark.parametrize("path", vector_files(), ids=lambda p: p.name)
def test_every_vector_human_output(path: Path, keystore: Path) -> None:
    code, out, err = run("inspect", str(path), "--keystore", str(keystore), "--acb", ACB)
    assert code == 0, err
    assert "groupingHeader" in out and "Verification" in out


def test_no_by_no_fields_named(keystore: Path) -> None:
    path = str(VECTORS / NO_BY_NO)
    code, out, _ = run("inspect", path, "--keystore", str(keystore), "--acb", ACB, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["groupingHeader"]["originatorCounter"] == 1200
    assert doc["groupingHeader"]["messageCode"]["value"] == "0x0103"
    control = doc["payload"]["authorisingRemotePartyControl"]
    assert control["credentialsReplacementMode"] == {"value": 3, "name": "networkOperatorByNetworkOperator"}
    assert control["authorisingRemotePartyTACellIdentifier"]["keyUsage"] == "digitalSignature"
    first = doc["payload"]["replacements"][0]["replacementCertificate"]
    assert first["subjectEntityId"] == "90b3d51f30020000"
    assert first["role"]["value"] == 3
    assert first["subjectKeyIdentifier"] == "4238d306b6f725a2"
    assert first["notAfter"].startswith("2026-01-09")
    assert doc["payload"]["certificationPathCertificates"][0]["subjectKeyIdentifier"] == "4f5688d7ec933be2"
    assert doc["frame"]["macHeader"]["acbSmdMac"] == "5ef46d9f5e4564b1d6c7deb5"
    assert doc["verification"]["signature"]["key"] == "90b3d51f30020000-ds.pem"


def test_response_outcomes_named(keystore: Path) -> None:
    path = VECTORS / "6.15.1_CS02bNOByNO/CS02bNOByNO_6.15.1_SUCCESS_RESPONSE_GBCS.HEX"
    code, out, _ = run("inspect", str(path), "--keystore", str(keystore), "--json")
    assert code == 0
    outcome = json.loads(out)["payload"]["executionOutcome"]
    assert outcome["authorisingRemotePartySeqNumber"] == 1200
    assert [o["statusCode"]["name"] for o in outcome["replacementOutcomes"]] == ["success", "success"]
    assert outcome["replacementOutcomes"][0]["existingSubjectKeyIdentifier"] == "48cf97fa9f827fb5"


def test_precommand_says_unsigned(keystore: Path) -> None:
    path = VECTORS / "6.15.1_CS02bNOByNO/CS02bNOByNO_6.15.1_SUCCESS_PRECOMMAND_GBCS.HEX"
    code, out, _ = run("inspect", str(path), "--keystore", str(keystore))
    assert code == 0
    assert "unsigned pre-command" in out


def test_hex_string_and_binary_file(keystore: Path, tmp_path: Path) -> None:
    data = load_input(str(VECTORS / NO_BY_NO))
    code, _, err = run("inspect", data.hex(), "--keystore", str(keystore))
    assert code == 0, err
    binary = tmp_path / "command.bin"
    binary.write_bytes(data)
    code, _, err = run("inspect", str(binary), "--keystore", str(keystore), "--acb", ACB)
    assert code == 0, err


def test_flipped_signature_byte_exits_1(keystore: Path) -> None:
    path = VECTORS / "6.15.1_CS02bNOByNO/CS02bNOByNO_6.15.1_SUCCESS_RESPONSE_GBCS.HEX"
    data = bytearray(load_input(str(path)))
    data[-5] ^= 0x01
    code, _out, err = run("inspect", bytes(data).hex(), "--keystore", str(keystore))
    assert code == EXIT_BAD_SIGNATURE
    assert err.count("\n") == 1 and "signature" in err


@pytest.mark.parametrize("offset", [3, 60, 200, 1000, 1350, 1410])
def test_flipped_byte_anywhere_exits_1_or_2(keystore: Path, offset: int) -> None:
    data = bytearray(load_input(str(VECTORS / NO_BY_NO)))
    data[offset] ^= 0x04
    code, _, err = run("inspect", bytes(data).hex(), "--keystore", str(keystore), "--acb", ACB)
    assert code in (EXIT_BAD_SIGNATURE, EXIT_DECODE)
    assert err.count("\n") == 1 and err.startswith("vdno-bench")


def test_mac_tamper_detected(keystore: Path) -> None:
    data = bytearray(load_input(str(VECTORS / "6.24.1_CS02aMAC/CS02aMAC_6.24.1_SUCCESS_RESPONSE_GBCS.HEX")))
    data[-1] ^= 0x80
    assert inspect_bytes(bytes(data), keystore, bytes.fromhex(ACB)).exit_code == EXIT_BAD_SIGNATURE


def test_garbage_exits_2(keystore: Path) -> None:
    code, _, err = run("inspect", "df0901", "--keystore", str(keystore))
    assert code == EXIT_DECODE
    assert err.count("\n") == 1 and "decode error" in err


def test_missing_keystore_entry_exits_4(keystore: Path, tmp_path: Path) -> None:
    partial = tmp_path / "ks"
    shutil.copytree(keystore, partial)
    (partial / "90b3d51f30020000-ds.pem").unlink()
    code, _, err = run("inspect", str(VECTORS / NO_BY_NO), "--keystore", str(partial))
    assert code == EXIT_MISSING_KEY
    assert err.count("\n") == 1 and "90b3d51f30020000-ds.pem" in err


def test_missing_mac_key_exits_4(keystore: Path, tmp_path: Path) -> None:
    partial = tmp_path / "ks"
    shutil.copytree(keystore, partial)
    (partial / "00db1234567890a0-ka.pem").unlink()
    code, _, _ = run("inspect", str(VECTORS / NO_BY_NO), "--keystore", str(partial), "--acb", ACB)
    assert code == EXIT_MISSING_KEY


def test_mac_only_message_without_acb_is_unverified(keystore: Path) -> None:
    path = VECTORS / "6.24.1_CS02aMAC/CS02aMAC_6.24.1_SUCCESS_COMMAND_GBCS.HEX"
    code, _, err = run("inspect", str(path), "--keystore", str(keystore))
    assert code == EXIT_UNVERIFIED
    assert "--acb" in err


def test_help_documents_exit_codes() -> None:
    code, out, _ = run("inspect", "--help")
    assert code == 0
    assert "Exit codes" in out and "certificate validity" in out.lower().replace("\n", " ").replace("  ", " ")


def test_bad_acb_is_usage_error(keystore: Path) -> None:
    code, _, err = run("inspect", str(VECTORS / NO_BY_NO), "--keystore", str(keystore), "--acb", "xyz")
    assert code == 2 and "--acb" in err
