"""Create a chunked or packed repository (`volbackup init`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from volbackup.ops.options import check_whole
from volbackup.repo.config import (CHUNKED, CHUNKER, CHUNKER_EACH, CHUNKER_PLAIN,
                                   DEFAULT_LAYOUT, DEFAULT_PACK, MAX_PACK, MIN_PACK, PACKED,
                                   RepoConfig)
from volbackup.repo.repository import Repository


@dataclass(frozen=True)
class InitOptions:
    """How the new repository stores snapshots; checked when made."""

    avg_chunk_size: int | None = None   # None: the layout's own (RepoConfig.new)
    chunker: str | None = None          # None: the layout's own (RepoConfig.new)
    layout: str = DEFAULT_LAYOUT        # PACKED (blobs in pack objects with an index) or CHUNKED
    pack_size: int = DEFAULT_PACK       # packed: a pack is closed past this many bytes
    encrypt_to: list[str] | None = None     # recipients: an encrypted repository
    key_file: str | None = None             # encrypted: where its new key is written
    storage: dict = field(default_factory=dict)   # S3 write options

    def __post_init__(self):
        if self.layout not in (CHUNKED, PACKED):
            raise ValueError(f"layout must be {CHUNKED!r} or {PACKED!r}, not {self.layout!r}")
        if self.chunker not in (None, CHUNKER, CHUNKER_PLAIN, CHUNKER_EACH):
            raise ValueError(f"unknown chunker {self.chunker!r}")
        check_whole("pack_size", self.pack_size, MIN_PACK, MAX_PACK)


@dataclass
class InitResult:
    repository: str
    id: str
    layout: str
    chunker: dict
    existing_snapshots: int   # archive-layout snapshots it already held (kept as they are)
    recipients: list[str]     # encrypted: who can read it
    key_file: str | None      # encrypted: where its key was written
    created_directory: bool   # the directory did not exist: init made it (0700)
    pack_size: int | None = None    # packed: the pack size


def create_repository(url: str, options: InitOptions = InitOptions()) -> InitResult:
    config = RepoConfig.new(options.avg_chunk_size, options.chunker, options.layout,
                            options.pack_size)
    repo = Repository.init(url, options.storage, config, options.encrypt_to, options.key_file)
    assert repo.config is not None
    held = len(repo.snapshots().snapshots)
    encryption = repo.config.encryption
    return InitResult(repo.describe(), repo.config.id, repo.layout.name,
                      vars(repo.config.chunker).copy(), held,
                      list(encryption.recipients) if encryption else [],
                      options.key_file if encryption else None, repo.made_store,
                      repo.config.pack_size)
