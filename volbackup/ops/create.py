"""Create a chunked repository (`volbackup init`)."""

from __future__ import annotations

from dataclasses import dataclass

from volbackup.repo.config import CHUNKER, DEFAULT_AVG, RepoConfig
from volbackup.repo.repository import Repository


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


def create_repository(url: str, options: dict | None = None,
                      avg_chunk_size: int = DEFAULT_AVG, encrypt_to: list[str] | None = None,
                      key_file: str | None = None, chunker: str = CHUNKER) -> InitResult:
    repo = Repository.init(url, options, RepoConfig.new(avg_chunk_size, chunker), encrypt_to,
                           key_file)
    assert repo.config is not None
    held = len(repo.snapshots().snapshots)
    encryption = repo.config.encryption
    return InitResult(repo.describe(), repo.config.id, repo.layout.name,
                      vars(repo.config.chunker).copy(), held,
                      list(encryption.recipients) if encryption else [],
                      key_file if encryption else None, repo.made_store)
