"""Ed25519 keys and action signing: the optimizer signs, hosts only verify.

Keys live in PEM files: the private key as unencrypted PKCS#8 (mode 0600), the public key as
SubjectPublicKeyInfo. A key is named by its **key id**: the first 16 hex characters (64 bits) of
``sha256(raw 32-byte Ed25519 public key)``. The id is derived, never configured, so a host's set
of trusted keys is exactly the set of ``*.pub`` files it was given, and a signer cannot claim an
id that does not belong to its key.

>>> import msgspec
>>> from accelpilot.schemas.actions import Action
>>> key = Ed25519PrivateKey.from_private_bytes(bytes(32))
>>> signer = Signer(key)
>>> action = Action(action_id="a1", host_id="h1", seq=1, kind="park", issued_ts_ns=0,
...                 expires_ts_ns=10, issuer="test", key_id="")
>>> signed = signer.sign(action)
>>> signed.key_id == key_id_of(key.public_key()) and len(signed.signature)
64
>>> signature_valid(signed, key.public_key())
True
>>> signature_valid(msgspec.structs.replace(signed, seq=2), key.public_key())
False
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from accelpilot.errors import KeyFileError
from accelpilot.schemas.actions import Action, signing_bytes

KEY_ID_HEX_CHARS = 16
SIGNATURE_BYTES = 64
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex chars of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def generate_keypair(directory: str | Path, name: str = "accelpilot") -> tuple[Path, Path]:
    """Write a new key pair as ``<name>.key`` (0600) and ``<name>.pub`` in ``directory``.

    Refuses to overwrite existing files. The private key file is created with mode 0600 from
    the start (never briefly world-readable). Returns ``(private_path, public_path)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, mode=0o600)
    _write_new(public_path, public_pem, mode=0o644)
    return private_path, public_path


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; set exactly what we mean
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror or e}") from e


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM (PKCS#8) Ed25519 private key."""
    path = Path(path)
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            f"{path} is not an unencrypted PEM private key ({e}); "
            "create one with `accelpilot keys generate --out DIR`"
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load one PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    path = Path(path)
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_public_keys(
    source: str | Path | Iterable[str | Path],
) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by key id, from a directory (every ``*.pub`` in it) or a list of files.

    An empty directory is an error: a host that trusts no key could never act, which is
    a deployment mistake worth failing loudly on at start-up.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        files = sorted(Path(source).glob(f"*{PUBLIC_SUFFIX}"))
        if not files:
            raise KeyFileError(f"no public keys (*{PUBLIC_SUFFIX}) in {source}")
    elif isinstance(source, (str, Path)):
        files = [Path(source)]
    else:
        files = [Path(p) for p in source]
    keys: dict[str, Ed25519PublicKey] = {}
    for path in files:
        key = load_public_key(path)
        keys[key_id_of(key)] = key
    return keys


def signature_valid(action: Action, public_key: Ed25519PublicKey) -> bool:
    """True when ``action.signature`` is ``public_key``'s signature over its signing bytes."""
    if len(action.signature) != SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(action.signature, signing_bytes(action))
    except InvalidSignature:
        return False
    return True


class Signer:
    """Signs actions with one private key; its ``key_id`` is derived from the key.

    ``key_id`` may be passed to assert which key is expected; a mismatch is an error because
    hosts look keys up by the derived id and would reject every action as ``unknown-key``.
    """

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        derived = key_id_of(private_key.public_key())
        if key_id is not None and key_id != derived:
            raise KeyFileError(f"key_id {key_id!r} does not match the private key's id {derived}")
        self._key = private_key
        self.key_id = derived

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        return cls(load_private_key(path))

    def sign(self, action: Action) -> Action:
        """A copy of ``action`` with ``key_id`` set to this signer's and ``signature`` set."""
        unsigned = msgspec.structs.replace(action, key_id=self.key_id, signature=b"")
        signature = self._key.sign(signing_bytes(unsigned))
        return msgspec.structs.replace(unsigned, signature=signature)
