"""The blob store (volbackup.repo.blobstore), the layouts (volbackup.repo.layout) and
revealed manifests, on real LocalBackends: deduplication decided inside the store, its
cipher fixed when built, one layout per config, and a manifest revealed once."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.chunkrepos import backup, chunk_list, chunked_repo, restored, volume_tar
from tests.unit.test_encryption import encrypted_repo, opened
from tests.unit.test_encryption import age_identity
from volbackup.errors import ChunkMissing, IntegrityError
from volbackup.repo.chunkstore import chunk_key
from volbackup.repo.manifest import Manifest, RevealedManifest
from volbackup.repo.repository import Repository
from volbackup.repo.sealing import Secrets


def data(seed: int, size: int = 50_000) -> bytes:
    return random.Random(seed).randbytes(size)


# -- the blob store: save asks what is stored, then writes


def test_save_writes_a_blob_once_and_load_gives_it_back(tmp_path):
    store = chunked_repo(tmp_path / "repo").blobs
    first = store.save(data(1), 3)
    again = store.save(data(1), 3)
    assert first.id == again.id == hashlib.sha256(data(1)).hexdigest()
    assert first.written and first.stored > 0 and not first.replaced
    assert not again.written and again.stored == 0
    assert (tmp_path / "repo" / chunk_key(first.id)).is_file()
    plain, stored = store.load(first.id, len(data(1)))
    assert plain == data(1) and stored == first.stored
    assert store.has(first.id, len(data(1)))


def test_a_blob_stored_by_another_run_is_not_written_again(tmp_path):
    made = chunked_repo(tmp_path / "repo").blobs.save(data(2), 3)
    other = Repository.open(str(tmp_path / "repo")).blobs  # lists chunks/ afresh
    assert other.save(data(2), 3) == replace(made, stored=0)


def test_verify_existing_replaces_a_damaged_blob_once(tmp_path):
    repo = chunked_repo(tmp_path / "repo")
    saved = repo.blobs.save(data(3), 3)
    path = tmp_path / "repo" / chunk_key(saved.id)
    path.write_bytes(b"planted")
    repo.blobs.forget()   # a new lock: what is stored is listed afresh
    assert not repo.blobs.has(saved.id, len(data(3)))
    assert repo.blobs.save(data(3), 3).stored == 0  # a backup trusts the names it lists
    fixed = repo.blobs.save(data(3), 3, verify_existing=True)
    assert fixed.replaced and fixed.written
    assert repo.blobs.load(saved.id, len(data(3)))[0] == data(3)
    assert not repo.blobs.save(data(3), 3, verify_existing=True).written  # checked once


def test_a_blob_removed_meanwhile_is_written_again_after_forget(tmp_path):
    repo = chunked_repo(tmp_path / "repo")
    saved = repo.blobs.save(data(4), 3)
    (tmp_path / "repo" / chunk_key(saved.id)).unlink()   # a prune's sweep, say
    with pytest.raises(ChunkMissing):
        repo.blobs.load(saved.id, len(data(4)))
    repo.blobs.forget()
    assert repo.blobs.save(data(4), 3).written


def test_save_stored_fetches_only_what_the_target_lacks(tmp_path):
    source = chunked_repo(tmp_path / "a").blobs
    target = chunked_repo(tmp_path / "b").blobs
    assert target.stores_like(source)
    held = target.save(data(5), 3)
    fetched = []

    def fetch(blob_id: str, length: int):
        def get() -> bytes:
            fetched.append(blob_id)
            return source.load_stored(blob_id, length)
        return get

    sent = source.save(data(6), 3)
    source.save(data(5), 3)
    assert not target.save_stored(held.id, held.length, fetch(held.id, held.length)).written
    copied = target.save_stored(sent.id, sent.length, fetch(sent.id, sent.length))
    assert copied.written and fetched == [sent.id]
    assert target.load(sent.id, sent.length)[0] == data(6)


def test_a_wrong_blob_is_refused_by_load(tmp_path):
    repo = chunked_repo(tmp_path / "repo")
    saved = repo.blobs.save(data(7), 3)
    other = repo.blobs.save(data(8), 3)
    (tmp_path / "repo" / chunk_key(saved.id)).write_bytes(
        (tmp_path / "repo" / chunk_key(other.id)).read_bytes())  # a valid chunk, wrong name
    with pytest.raises(IntegrityError, match=f"chunk {saved.id}"):
        repo.blobs.load(saved.id, len(data(7)))


# -- the cipher is fixed when the store is built


def test_an_encrypted_store_is_built_once_and_reads_what_it_wrote(tmp_path):
    """A restore --force writes a safety snapshot, then reads: one store, one cipher (the
    writing one was replaced by a reading one at the first reveal)."""
    identity, key_file = tmp_path / "id.txt", tmp_path / "repo.key"
    encrypted_repo(tmp_path / "repo", [age_identity(identity)], key_file)
    repo = opened(tmp_path / "repo", key_file, identity)
    store = repo.blobs
    assert store.encrypted and not store.stores_like(store)
    manifest = backup(repo, volume_tar(3, size=100_000))
    assert repo.blobs is store
    assert restored(repo, repo.load(manifest.snapshot)) == volume_tar(3, size=100_000)
    assert repo.blobs is store
    saved = store.save(data(9), 3)
    assert saved.id != hashlib.sha256(data(9)).hexdigest()   # keyed: an HMAC
    assert store.load(saved.id, len(data(9)))[0] == data(9)


def test_a_plain_store_does_not_store_like_an_encrypted_one(tmp_path):
    identity, key_file = tmp_path / "id.txt", tmp_path / "repo.key"
    encrypted_repo(tmp_path / "enc", [age_identity(identity)], key_file)
    plain = chunked_repo(tmp_path / "plain")
    sealed = opened(tmp_path / "enc", key_file)
    assert not plain.blobs.stores_like(sealed.blobs)
    assert not sealed.blobs.stores_like(plain.blobs)
    assert not plain.names_chunks_as(sealed) and not sealed.names_chunks_as(plain)


def test_list_of_an_encrypted_repository_builds_no_store(tmp_path):
    """The store's cipher needs the key: a command that reads no chunk (list) never
    builds it, so it needs no key."""
    identity, key_file = tmp_path / "id.txt", tmp_path / "repo.key"
    encrypted_repo(tmp_path / "repo", [age_identity(identity)], key_file)
    repo = Repository.open(str(tmp_path / "repo"), secrets=Secrets(), refuse_plain=False)
    with repo.lock("shared", 5, "test"):
        assert repo.snapshots().snapshots == []
    assert repo.layout._blobs is None


# -- the layout, chosen once from the config


def test_the_layout_follows_the_config(tmp_path):
    (tmp_path / "old").mkdir()
    old = Repository.open(str(tmp_path / "old"))
    assert (old.layout.name, old.layout.chunked) == ("archive", False)
    manifest = backup(old, volume_tar(1, size=10_000))
    assert manifest.archive.endswith(".tar.zst") and not manifest.chunked
    assert (tmp_path / "old/snapshots/pgdata" / manifest.archive.replace(
        ".tar.zst", ".catalog.zst")).is_file()
    new = chunked_repo(tmp_path / "new")
    assert (new.layout.name, new.layout.chunked) == ("chunked", True)
    chunked = backup(new, volume_tar(1, size=10_000))
    assert chunked.archive.endswith(".chunks") and chunked.chunked and chunked.chunks
    assert len(chunk_list(new, chunked)) == chunked.chunks
    assert old.layout.stores_chunks_like(new.layout) is False
    assert new.layout.stores_chunks_like(chunked_repo(tmp_path / "other").layout)


# -- manifests revealed once, into their own type


def test_reveal_gives_a_revealed_manifest_in_a_plain_repository(tmp_path):
    repo = chunked_repo(tmp_path / "repo")
    manifest = backup(repo, volume_tar(2, size=10_000))
    loaded = repo.load(manifest.snapshot)
    assert type(loaded) is Manifest
    whole = repo.reveal(loaded)
    assert isinstance(whole, RevealedManifest) and whole == loaded
    assert repo.reveal(whole) is whole


def test_a_replaced_revealed_manifest_is_still_revealed(tmp_path):
    """Issue 24: a `dataclasses.replace` of a revealed manifest lost the mark set on the
    object, was revealed again, and its MAC (over the sealed form) then failed: reported
    as forged. Revealed is now a type, which replace keeps."""
    identity, key_file = tmp_path / "id.txt", tmp_path / "repo.key"
    encrypted_repo(tmp_path / "repo", [age_identity(identity)], key_file)
    repo = opened(tmp_path / "repo", key_file, identity)
    manifest = backup(repo, volume_tar(4, size=50_000))
    whole = repo.reveal(repo.load(manifest.snapshot))
    assert isinstance(whole, RevealedManifest) and whole.labels == manifest.labels
    changed = replace(whole, seconds=whole.seconds + 1)
    assert isinstance(changed, RevealedManifest)
    assert repo.reveal(changed) is changed
    assert restored(repo, changed) == volume_tar(4, size=50_000)
    sealed = repo.keyring.seal(changed)        # what a commit writes: no longer revealed
    assert type(sealed) is Manifest and sealed.labels == {} and sealed.mac


def test_a_whole_manifest_not_revealed_here_is_authenticated(tmp_path):
    """Only reveal makes a RevealedManifest: a Manifest with its private fields filled in
    by anyone else is checked, and its MAC (over the sealed form) fails; one revealed by a
    plain repository is not taken by an encrypted one."""
    identity, key_file = tmp_path / "id.txt", tmp_path / "repo.key"
    encrypted_repo(tmp_path / "repo", [age_identity(identity)], key_file)
    repo = opened(tmp_path / "repo", key_file, identity)
    manifest = backup(repo, volume_tar(5, size=20_000))
    whole = repo.reveal(repo.load(manifest.snapshot))
    as_manifest = Manifest(**{name: getattr(whole, name)
                              for name in Manifest.__dataclass_fields__})
    with pytest.raises(IntegrityError, match="not authentic"):
        repo.reveal(as_manifest)
    plain = chunked_repo(tmp_path / "plain")
    from_plain = plain.reveal(backup(plain, volume_tar(5, size=20_000)))
    with pytest.raises(IntegrityError, match="not encrypted"):
        repo.reveal(from_plain)


def test_a_revealed_manifest_serialises_as_the_manifest_it_was(tmp_path):
    repo = chunked_repo(tmp_path / "repo")
    manifest = backup(repo, volume_tar(6, size=10_000))
    loaded = repo.load(manifest.snapshot)
    assert repo.reveal(loaded).to_json() == loaded.to_json()
    assert Path(tmp_path / "repo" / Repository.manifest_key(manifest.snapshot)).read_text() \
        == loaded.to_json()
