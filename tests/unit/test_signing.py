"""Key files, key ids and action signatures (accelpilot.signing)."""

from __future__ import annotations

import doctest
import hashlib
import re
import stat
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accelpilot import signing
from accelpilot.schemas import codec
from accelpilot.schemas.actions import Action
from accelpilot.signing import (
    KeyFileError,
    Signer,
    generate_keypair,
    key_id_of,
    load_private_key,
    load_public_keys,
    signature_valid,
)


def _action(**overrides: object) -> Action:
    fields: dict[str, object] = {
        "action_id": "a-1",
        "host_id": "h1",
        "seq": 7,
        "kind": "set_power_cap",
        "device_id": "gpu0",
        "cap_w": 250.0,
        "issued_ts_ns": 1_700_000_000_000_000_000,
        "expires_ts_ns": 1_700_000_060_000_000_000,
        "issuer": "optimizer-1",
        "key_id": "",
    }
    fields.update(overrides)
    return Action(**fields)  # type: ignore[arg-type]


def test_generate_keypair_writes_pem_files_with_private_key_0600(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "keys", name="opt")
    assert private_path == tmp_path / "keys" / "opt.key"
    assert public_path == tmp_path / "keys" / "opt.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_generate_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    private_path, _ = generate_keypair(tmp_path)
    before = private_path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path)
    assert private_path.read_bytes() == before


def test_key_id_is_sha256_prefix_of_raw_public_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id_of(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]


def test_files_round_trip_to_matching_key_ids(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path, name="a")
    generate_keypair(tmp_path, name="b")
    signer = Signer.from_file(private_path)
    from_dir = load_public_keys(tmp_path)
    assert len(from_dir) == 2
    assert signer.key_id in from_dir
    assert list(load_public_keys([public_path])) == [signer.key_id]
    assert list(load_public_keys(str(public_path))) == [signer.key_id]
    assert signature_valid(signer.sign(_action()), from_dir[signer.key_id])


def test_empty_key_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=re.escape(str(tmp_path))):
        load_public_keys(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n"])
def test_unreadable_public_key_names_the_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_bytes(content)
    with pytest.raises(KeyFileError, match=r"bad\.pub"):
        load_public_keys(tmp_path)


def test_missing_key_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"nope\.pub"):
        load_public_keys([tmp_path / "nope.pub"])
    with pytest.raises(KeyFileError, match=r"nope\.key"):
        load_private_key(tmp_path / "nope.key")


def test_non_ed25519_keys_are_refused_by_type(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "ec.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError, match=r"ec\.pub.*not an Ed25519 public key"):
        load_public_keys(tmp_path)
    with pytest.raises(KeyFileError, match=r"ec\.key.*not an Ed25519 private key"):
        load_private_key(tmp_path / "ec.key")


def test_private_key_given_as_public_key_is_refused(tmp_path: Path) -> None:
    private_path, _ = generate_keypair(tmp_path, name="k")
    with pytest.raises(KeyFileError, match=r"k\.key"):
        load_public_keys([private_path])


def test_signer_rejects_a_key_id_that_is_not_its_own() -> None:
    key = Ed25519PrivateKey.generate()
    assert Signer(key, key_id_of(key.public_key())).key_id == key_id_of(key.public_key())
    with pytest.raises(KeyFileError, match="does not match"):
        Signer(key, "0123456789abcdef")


def test_sign_returns_a_signed_copy_and_leaves_the_input_alone() -> None:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    original = _action(key_id="whatever")
    signed = signer.sign(original)
    assert original.signature == b"" and original.key_id == "whatever"
    assert signed.key_id == signer.key_id
    assert len(signed.signature) == 64
    assert msgspec.structs.replace(signed, signature=b"", key_id="whatever") == original
    assert signature_valid(signed, key.public_key())
    assert not signature_valid(signed, Ed25519PrivateKey.generate().public_key())
    assert not signature_valid(msgspec.structs.replace(signed, cap_w=251.0), key.public_key())
    assert not signature_valid(msgspec.structs.replace(signed, signature=b"x"), key.public_key())


def test_signature_survives_the_wire() -> None:
    key = Ed25519PrivateKey.generate()
    signed = Signer(key).sign(
        _action(
            kind="set_load_weights",
            device_id=None,
            cap_w=None,
            stream_id="s",
            weights={"gpu1": 2.0, "gpu0": 1.5},
        )
    )
    received = codec.decode(Action, codec.encode(signed))
    assert received == signed
    assert signature_valid(received, key.public_key())


def test_module_doctests_run() -> None:
    assert doctest.testmod(signing).failed == 0


def test_keys_generate_command_writes_a_pair_the_verifier_trusts(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "accelpilot.cli", "keys", "generate", "--out", str(tmp_path),
             "--name", "ops"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stderr
    signer = Signer.from_file(tmp_path / "ops.key")
    assert signer.key_id in first.stdout
    assert signer.key_id in load_public_keys(tmp_path)
    again = run()  # never overwrites: the old key stays trusted
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert Signer.from_file(tmp_path / "ops.key").key_id == signer.key_id
