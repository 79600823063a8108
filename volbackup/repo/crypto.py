"""Encryption of a chunked repository to age recipients, and the repository key.

Two kinds of secret, kept apart (docs/security.md has the whole model):
- **identities** (age X25519 or SSH private keys) decrypt. Only restore, verify and export
  need one; backup hosts never hold one.
- the **repository key** (32 random bytes, made by `init`) names chunks (HMAC, so a reader of
  the bucket cannot confirm that a known file is stored), seeds the chunker, and
  authenticates snapshots and the config (HMAC, so a writer to the bucket without it cannot
  forge or swap them). Backup hosts hold it in a key file; the config holds it sealed to the
  recipients, so an identity recovers it.

Every primitive is age's (pyrage, the binding of rage) or from `cryptography`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as stdlib_hmac
import os
import secrets
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import pyrage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyrage import ssh, x25519

from volbackup.errors import IntegrityError, KeyProblem

KEY_BYTES = 32
# A comment line to age, so the key file can be appended to an identity file that stock
# `age -d -i` still reads (restores need both: docs/security.md).
KEY_PREFIX = "# volbackup-repository-key-v1: "
MAX_KEY_FILE = 64 << 10


@dataclass(frozen=True)
class RepositoryKey:
    """The repository key and what is derived from it (HKDF-SHA256, one label each)."""

    secret: bytes

    def _derive(self, label: str, length: int = 32) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                    info=f"volbackup {label}".encode()).derive(self.secret)

    @property
    def check(self) -> str:
        """Stored in the config in the clear: tells a wrong key file from the right one,
        and nothing about the key."""
        return self._derive("key check", 16).hex()

    def mac(self, data: bytes) -> str:
        return _hmac(self._derive("authentication"), data).hex()

    def verify(self, data: bytes, mac: object, what: str) -> None:
        if not isinstance(mac, str) or not stdlib_hmac.compare_digest(self.mac(data), mac):
            raise IntegrityError(f"{what} is not authentic: its MAC does not match the "
                                 f"repository key (forged, or altered in the repository)")

    @property
    def member_name_key(self) -> bytes:
        """Keys the hash of member names that ends groups of tiny members (the packed
        layout's cuts): which names end groups is then known only to key holders."""
        return self._derive("member names")

    @property
    def catalog_cut_key(self) -> bytes:
        """Keys the hash of catalogue lines that ends catalogue pieces (catalogue version
        2): piece sizes then tell nothing of which lines end them."""
        return self._derive("catalogue cuts")

    @property
    def chunker_seed(self) -> int:
        """Chunk boundaries (hence sizes) that only key holders can predict."""
        return int.from_bytes(self._derive("chunker seed", 4), "big") >> 1

    def to_text(self) -> str:
        return KEY_PREFIX + base64.b64encode(self.secret).decode() + "\n"

    @classmethod
    def generate(cls) -> "RepositoryKey":
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, where: str) -> "RepositoryKey":
        lines = [line.strip() for line in text.splitlines()
                 if line.strip().startswith(KEY_PREFIX.strip())]
        if len(lines) != 1:
            raise KeyProblem(f"{where} is not a volbackup repository key file" if not lines
                             else f"{where} holds {len(lines)} repository keys; keep one")
        try:
            secret = base64.b64decode(lines[0][len(KEY_PREFIX.strip()):].strip(), validate=True)
        except (binascii.Error, ValueError):
            secret = b""
        if len(secret) != KEY_BYTES:
            raise KeyProblem(f"{where} is not a volbackup repository key file (bad key)")
        return cls(secret)


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def parse_recipient(text: str):
    """An age X25519 recipient (`age1...`) or an SSH public key (ssh-ed25519, ssh-rsa)."""
    text = text.strip()
    try:
        if text.startswith("age1"):
            return x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return ssh.Recipient.from_str(text)
    except pyrage.RecipientError as e:
        raise KeyProblem(f"recipient {_short(text)} is not valid: {e}") from None
    except ValueError as e:
        raise KeyProblem(f"recipient {_short(text)} is not valid: {e}") from None
    raise KeyProblem(f"recipient {_short(text)} is neither an age public key (age1...) nor "
                     f"an SSH ed25519 or RSA public key")


def recipients_from_lines(lines: Iterable[str]) -> list[str]:
    """Recipients of a recipients file: one per line; blank lines and # comments skipped."""
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def load_identities(path: str) -> tuple[list, RepositoryKey | None]:
    """The identities in an age identity file (AGE-SECRET-KEY-1... lines) or an unencrypted
    SSH private key, and the repository key if the file carries one too (a key file
    appended to it). Messages never quote the file: it is a secret."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_FILE + 1)
    except OSError as e:
        raise KeyProblem(f"cannot read identity file {path}: {e.strerror}") from None
    if len(raw) > MAX_KEY_FILE:
        raise KeyProblem(f"identity file {path} is too large to be an identity file")
    text = raw.decode("utf-8", "replace")
    key = (RepositoryKey.from_text(text, f"identity file {path}")
           if KEY_PREFIX.strip() in text else None)
    if b"PRIVATE KEY-----" in raw:
        # From the BEGIN line to the end of the END line: a key file appended after it
        # (the repository key) is no part of the PEM block.
        start = raw.find(b"-----BEGIN")
        end = raw.find(b"PRIVATE KEY-----", raw.find(b"-----END", start + 1))
        try:
            if start < 0 or end < 0 or raw.find(b"-----END", start + 1) < 0:
                raise ValueError("no complete PEM block")
            return [ssh.Identity.from_buffer(raw[start:end + 16] + b"\n")], key
        except Exception:  # pyrage raises several types here; none of them may echo the key
            raise KeyProblem(f"identity file {path} holds an SSH key that cannot be used "
                             f"(encrypted with a passphrase, or not ed25519/RSA)") from None
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-1"):
            try:
                found.append(x25519.Identity.from_str(line))
            except Exception:
                raise KeyProblem(f"identity file {path} has an invalid AGE-SECRET-KEY "
                                 f"line") from None
    if not found:
        raise KeyProblem(f"identity file {path} holds no age identity (AGE-SECRET-KEY-1...) "
                         f"and no SSH private key")
    return found, key


def load_key_file(path: str) -> RepositoryKey:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(MAX_KEY_FILE + 1)
    except OSError as e:
        raise KeyProblem(f"cannot read repository key file {path}: {e.strerror}") from None
    return RepositoryKey.from_text(text, f"key file {path}")


def write_key_file(path: str, key: RepositoryKey) -> None:
    """0600, created new: never replaces a file (another repository's key, say)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyProblem(f"{path} exists; give a new file for the repository key") from None
    except OSError as e:
        raise KeyProblem(f"cannot create repository key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key.to_text())
        handle.flush()
        os.fsync(handle.fileno())


def encrypt(data: bytes, recipients: Sequence) -> bytes:
    return pyrage.encrypt(data, list(recipients))


def decrypt(data: bytes, identities: Sequence, what: str) -> bytes:
    """Decrypt an age file; a wrong identity is KeyProblem, a damaged file IntegrityError."""
    try:
        return pyrage.decrypt(data, list(identities))
    except pyrage.DecryptError as e:
        if "No matching keys" in str(e):
            raise KeyProblem(f"{what} is not encrypted to the identity given (wrong "
                             f"--identity?)") from None
        raise IntegrityError(f"{what} cannot be decrypted: damaged or not an age file "
                             f"({e})") from None


DATA_KEY_BYTES = 32     # a pack's AES-256-GCM key
NONCE_BYTES = 12
TAG_BYTES = 16
MAC_BYTES = 32


class PlainChunks:
    """Chunks of a plain repository: named by sha256, stored as their zstd frame."""

    encrypted = False

    def mac(self, label: bytes, data: bytes) -> bytes:
        """A plain repository authenticates nothing (docs/security.md)."""
        return b""

    def chunk_id(self, plaintext: bytes) -> str:
        return hashlib.sha256(plaintext).hexdigest()

    def same_names(self, other: "PlainChunks | SealedChunks") -> bool:
        """Does `other` name every blob as this cipher does (both plain: sha256)?"""
        return not other.encrypted

    def seal(self, frame: bytes) -> bytes:
        return frame

    def open(self, stored: bytes, chunk_id: str) -> bytes:
        return stored


class SealedChunks:
    """Chunks of an encrypted repository: named by HMAC with the repository key, stored as
    an age file (to every recipient) holding their zstd frame. `identities` gives those
    that open them, asked when the first chunk is read (a backup host holds none)."""

    encrypted = True

    def __init__(self, key: RepositoryKey, recipients: Sequence,
                 identities: Callable[[], Sequence] = lambda: ()):
        self._key, self._recipients, self._identities = key, list(recipients), identities
        self._name_key = key._derive("chunk names")
        self._auth_key = key._derive("authentication")

    def chunk_id(self, plaintext: bytes) -> str:
        return _hmac(self._name_key, plaintext).hex()

    def same_names(self, other: "PlainChunks | SealedChunks") -> bool:
        """Does `other` name every blob as this cipher does (the same name key: the same
        repository key)?"""
        return isinstance(other, SealedChunks) and stdlib_hmac.compare_digest(
            self._name_key, other._name_key)

    def seal(self, frame: bytes) -> bytes:
        return encrypt(frame, self._recipients)

    def mac(self, label: bytes, data: bytes) -> bytes:
        """HMAC-SHA256 of `label || data` with the authentication key (pack trailers,
        index objects): what a writer without the key cannot make."""
        return _hmac(self._auth_key, label + data)

    def new_data_key(self) -> tuple[bytes, bytes]:
        """A fresh key for one pack's records, and that key sealed to the recipients (one
        age operation per pack, not per blob): (key, sealed key)."""
        key = secrets.token_bytes(DATA_KEY_BYTES)
        return key, encrypt(key, self._recipients)

    def open_data_key(self, sealed: bytes, what: str) -> bytes:
        """A pack's data key from its sealed form (needs an identity)."""
        identities = self._identities()
        if not identities:
            raise KeyProblem("reading an encrypted repository needs an identity (--identity "
                             "FILE or $VOLBACKUP_IDENTITY_FILE)")
        try:
            key = decrypt(sealed, identities, what)
        except KeyProblem:
            raise IntegrityError(f"{what} is not encrypted to the repository's recipients "
                                 f"(replaced in the repository?)") from None
        if len(key) != DATA_KEY_BYTES:
            raise IntegrityError(f"{what} does not hold a data key")
        return key

    @staticmethod
    def seal_record(data_key: bytes, blob_id: bytes, frame: bytes) -> bytes:
        """nonce || AES-256-GCM(frame), the blob's id bound as associated data: a record
        moved under another id fails its tag."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(data_key).encrypt(nonce, frame, blob_id)

    @staticmethod
    def open_record(data_key: bytes, blob_id: bytes, stored: bytes) -> bytes:
        if len(stored) < NONCE_BYTES + TAG_BYTES:
            raise IntegrityError(f"blob {blob_id.hex()} is too short to be sealed")
        try:
            return AESGCM(data_key).decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:], blob_id)
        except InvalidTag:
            raise IntegrityError(f"blob {blob_id.hex()} fails its authentication tag (altered, "
                                 f"or moved in the repository)") from None

    def open(self, stored: bytes, chunk_id: str) -> bytes:
        identities = self._identities()
        if not identities:
            raise KeyProblem("reading an encrypted repository needs an identity (--identity "
                             "FILE or $VOLBACKUP_IDENTITY_FILE)")
        try:
            return decrypt(stored, identities, f"chunk {chunk_id}")
        except KeyProblem:
            # The identity opened the snapshot's sealed part before a chunk is read, so it
            # is a recipient: a chunk it cannot open was replaced, not read with a wrong key.
            raise IntegrityError(f"chunk {chunk_id} is not encrypted to the repository's "
                                 f"recipients (replaced in the repository?)") from None
