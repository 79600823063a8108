"""The keys of an encrypted repository, and sealing and revealing its snapshots.

Which key a command needs (docs/security.md):
- backup and import: the repository key (`--key-file`), to name chunks and authenticate
  what they write; the recipients come from the config, once its MAC checks out.
- restore, verify and export: an identity (`--identity`) to decrypt, and the repository key
  to check names and MACs. The identity file may carry the key (the key file appended to
  it). The config holds the key sealed to the recipients too, but a writer to the bucket
  can seal a key of their own to the same public recipients, so that copy is used only
  with `--trust-repository-key` (the key file lost).
- prune: the repository key, to decide only on snapshots a key holder wrote (their MACs);
  without it, prune of an encrypted repository is refused (exit 17).
- list: nothing; given the key, it lists only authentic snapshots and reports the others.
- unlock, cleanup: nothing; they read only what is public.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, replace

from volbackup.errors import IntegrityError, KeyProblem, RepositoryError
from volbackup.repo import crypto
from volbackup.repo.config import (ENCRYPTED_VERSION, PACKED_SCHEME, SCHEME, Encryption,
                                   RepoConfig)
from volbackup.repo.manifest import (OPTIONAL_PRIVATE, PRIVATE_FIELDS, SEALED_VERSION, Manifest,
                                     RevealedManifest, fields_of)

KEY_FILE_ENV = "VOLBACKUP_KEY_FILE"
IDENTITY_FILE_ENV = "VOLBACKUP_IDENTITY_FILE"
_BLANK = {"labels": {}, "driver_options": {}, "mount_path": None, "bind_path": None,
          "source_container": None, "tar_sha256": None, "excluded": None}


@dataclass(frozen=True)
class Secrets:
    """Where the secrets of an encrypted repository are; None: not given."""

    key_file: str | None = None
    identity_file: str | None = None
    trust_repository_key: bool = False

    @classmethod
    def from_env(cls) -> "Secrets":
        return cls(os.environ.get(KEY_FILE_ENV) or None,
                   os.environ.get(IDENTITY_FILE_ENV) or None)


def new_encryption(recipient_texts: list[str], config: RepoConfig
                   ) -> tuple[RepoConfig, crypto.RepositoryKey]:
    """An encrypted version of `config` to these recipients, and its new key."""
    if not recipient_texts:
        raise KeyProblem("give at least one recipient (--encrypt-to or --recipients-file)")
    recipients = [crypto.parse_recipient(text) for text in recipient_texts]
    key = crypto.RepositoryKey.generate()
    sealed = base64.b64encode(crypto.encrypt(key.to_text().encode(), recipients)).decode()
    encryption = Encryption(tuple(t.strip() for t in recipient_texts), key.check, sealed,
                            PACKED_SCHEME if config.packed else SCHEME)
    chunker = replace(config.chunker, seed=0)  # the real one comes from the key
    unsigned = replace(config, chunker=chunker, encryption=encryption,
                       format_version=config.format_version if config.packed
                       else ENCRYPTED_VERSION, chunk_hash="hmac-sha256")
    return replace(unsigned, mac=key.mac(unsigned.signed_bytes())), key


class Keyring:
    """The keys of one encrypted repository, loaded when first needed."""

    def __init__(self, config: RepoConfig, secrets: Secrets, where: str):
        assert config.encryption is not None
        self.config, self.secrets, self.where = config, secrets, where
        self._key: crypto.RepositoryKey | None = None
        self._identities: list | None = None

    def identities(self) -> list:
        if self._identities is None:
            if not self.secrets.identity_file:
                raise KeyProblem(f"repository {self.where} is encrypted: reading it needs an "
                                 f"identity (--identity FILE or ${IDENTITY_FILE_ENV})")
            self._identities, carried = crypto.load_identities(self.secrets.identity_file)
            # A key file given wins over a key the identity file carries (that of another
            # repository, say: one identity file can serve several).
            if carried is not None and self._key is None and not self.secrets.key_file:
                self._accept(carried, f"the key in identity file {self.secrets.identity_file}")
        return self._identities

    def key(self, for_reading: bool = False) -> crypto.RepositoryKey:
        """The repository key from a place the bucket does not control, checked against the
        config (and the config's MAC against it)."""
        if self._key is not None:
            return self._key
        if self.secrets.key_file:
            self._accept(crypto.load_key_file(self.secrets.key_file),
                         f"key file {self.secrets.key_file}")
        elif self.secrets.identity_file:
            self.identities()  # takes the key the identity file carries, if it does
            if self._key is None and self.secrets.trust_repository_key:
                self._accept(self._unseal_config_key(), "the key sealed in the config")
        if self._key is None:
            need = ("the repository key: --key-file FILE (or $VOLBACKUP_KEY_FILE), or an "
                    "identity file that carries it"
                    + (", or --trust-repository-key with the identity if the key file is "
                       "lost" if for_reading else ""))
            raise KeyProblem(f"repository {self.where} is encrypted: this needs {need}")
        return self._key

    def check(self, reading: bool) -> None:
        """Load and check the secrets a command needs, before it touches a volume: one
        KeyProblem (exit 17) rather than a failure per volume, after containers were
        stopped and volumes read. An identity is checked by opening the key sealed in
        the config (after the config's MAC checked out), which every recipient can."""
        if not reading:
            self.key()
            return
        identities = self.identities()
        self.key(for_reading=True)
        self._unseal_config_key(identities)

    def _accept(self, key: crypto.RepositoryKey, source: str) -> None:
        assert self.config.encryption is not None
        if key.check != self.config.encryption.key_check:
            raise KeyProblem(f"{source} is not the key of repository {self.where}")
        key.verify(self.config.signed_bytes(), self.config.mac,
                   f"the config of repository {self.where}")
        self._key = key

    def _unseal_config_key(self, identities: list | None = None) -> crypto.RepositoryKey:
        assert self.config.encryption is not None
        try:
            sealed = base64.b64decode(self.config.encryption.sealed_key, validate=True)
        except (binascii.Error, ValueError):
            raise RepositoryError(f"the config of repository {self.where} has an invalid "
                                  f"sealed key") from None
        text = crypto.decrypt(sealed, identities or self.identities(),
                              "the key sealed in the config")
        return crypto.RepositoryKey.from_text(text.decode("utf-8", "replace"),
                                              "the key sealed in the config")

    def recipients(self) -> list:
        self.key()  # the config's MAC is checked before its recipients are used
        assert self.config.encryption is not None
        return [crypto.parse_recipient(text) for text in self.config.encryption.recipients]

    def cipher(self) -> crypto.SealedChunks:
        """How this repository's chunks are named and sealed (needs the key), and opened
        (the identities, asked for when the first chunk is read: a backup host has none)."""
        return crypto.SealedChunks(self.key(), self.recipients(), self._given_identities)

    def _given_identities(self) -> list:
        return self.identities() if self.secrets.identity_file else []

    @property
    def can_authenticate(self) -> bool:
        """A key was given (or loaded): listings check every manifest's MAC."""
        return self._key is not None or bool(self.secrets.key_file or self.secrets.identity_file)

    def authenticate(self, manifest: Manifest) -> None:
        """Raise IntegrityError unless a holder of the repository key wrote `manifest` (its
        MAC checks out): what prune and list decide on. Needs the key, not an identity."""
        if not manifest.encrypted:
            raise IntegrityError(f"snapshot {manifest.snapshot} is not encrypted, in an "
                                 f"encrypted repository (written by someone without its key?)")
        self.key(for_reading=True).verify(manifest.signed_bytes(), manifest.mac,
                                          f"snapshot {manifest.snapshot}")

    def seal(self, manifest: Manifest) -> Manifest:
        """The manifest as stored: private fields sealed, everything MACed."""
        private = json.dumps(manifest.private(), sort_keys=True).encode()
        sealed = base64.b64encode(crypto.encrypt(private, self.recipients())).decode()
        public = replace(Manifest(**fields_of(manifest)), **_BLANK, encrypted=True, sealed=sealed, mac=None,
                         format_version=max(manifest.format_version, SEALED_VERSION))
        return replace(public, mac=self.key().mac(public.signed_bytes()))

    def reveal(self, manifest: Manifest) -> RevealedManifest:
        """The whole manifest, once its MAC and sealed part check out (one revealed already
        is returned as it is: its private fields are no longer what the MAC covers; one a
        plain repository revealed is refused below, as any plain manifest is)."""
        if isinstance(manifest, RevealedManifest) and manifest.encrypted:
            return manifest
        if not manifest.encrypted:
            self.authenticate(manifest)  # raises: the message says why
        identities = self.identities()
        self.authenticate(manifest)
        try:
            sealed = base64.b64decode(manifest.sealed or "", validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError(f"snapshot {manifest.snapshot} has an invalid sealed "
                                 f"part") from None
        raw = crypto.decrypt(sealed, identities, f"snapshot {manifest.snapshot}")
        try:
            private = json.loads(raw)
        except ValueError:
            private = None
        if not isinstance(private, dict) or not (
                set(PRIVATE_FIELDS) - set(OPTIONAL_PRIVATE) <= set(private) <= set(PRIVATE_FIELDS)):
            raise IntegrityError(f"snapshot {manifest.snapshot} has an invalid sealed part")
        whole = RevealedManifest.of(replace(manifest, **private))
        whole._check_types(f"of snapshot {manifest.snapshot}")
        return whole
