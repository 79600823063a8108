"""open_backend's registry of URL schemes: what each opens, what is refused, that a store's
client library loads only for its own URLs, and that every scheme is documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from volbackup.errors import RepositoryError
from volbackup.repo.backends import (
    SCHEMES,
    LocalBackend,
    MakesItsPlace,
    RetryBackend,
    TempFiles,
    open_backend,
)


def test_paths_and_file_urls_are_directories(tmp_path):
    for url in (str(tmp_path), f"file://{tmp_path}"):
        backend = open_backend(url)
        assert type(backend) is LocalBackend and backend.describe() == str(tmp_path)


def test_an_unknown_scheme_names_the_forms_there_are():
    with pytest.raises(RepositoryError) as caught:
        open_backend("ftp://nas/x")
    message = str(caught.value)
    assert "unsupported repository URL scheme 'ftp'" in message
    assert all(scheme.form in message for scheme in SCHEMES.values())


@pytest.mark.parametrize("url", ["/srv/backups", "file:///srv/backups", "sftp://nas/srv/b",
                                 "webdav://nas/b", "azure://cont/b", "swift://cont/b"])
def test_s3_options_are_refused_elsewhere(url):
    with pytest.raises(RepositoryError, match="apply only to s3:// repositories"):
        open_backend(url, {"storage_class": "STANDARD_IA"})
    with pytest.raises(ValueError, match="unknown backend options"):
        open_backend(url, {"colour": "blue"})


def test_sftp_is_opened_inside_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLBACKUP_SSH_CONFIG", str(tmp_path / "none"))
    (tmp_path / "none").write_text("")
    monkeypatch.setenv("VOLBACKUP_SFTP_ATTEMPTS", "3")
    backend = open_backend("sftp://nas/srv/b")  # nothing connects until a verb is called
    assert isinstance(backend, RetryBackend) and backend.retry.attempts == 3
    assert backend.describe() == "sftp://nas/srv/b"
    monkeypatch.setenv("VOLBACKUP_SFTP_ATTEMPTS", "many")
    with pytest.raises(RepositoryError, match="VOLBACKUP_SFTP_ATTEMPTS is not a whole number"):
        open_backend("sftp://nas/srv/b")


@pytest.mark.parametrize("url, capabilities", [
    ("webdav://nas/b", {TempFiles, MakesItsPlace}), ("webdavs://nas/b", {TempFiles, MakesItsPlace}),
    ("azure://cont/b", set()), ("swift://cont/b", set())])
def test_the_opendal_schemes_open_inside_retry_with_their_capabilities(url, capabilities,
                                                                      monkeypatch):
    """Registered like the others; WebDAV alone has temp files and a place init makes."""
    for name in ("ST_AUTH", "ST_USER", "ST_KEY", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"VOLBACKUP_WEBDAV_USER": "u", "VOLBACKUP_WEBDAV_PASSWORD": "p",
                        "AZURE_STORAGE_CONNECTION_STRING":
                            "AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a",
                        "OS_STORAGE_URL": "http://127.0.0.1:9/v1", "OS_AUTH_TOKEN": "t",
                        "VOLBACKUP_STORE_ATTEMPTS": "3"}.items():
        monkeypatch.setenv(name, value)
    backend = open_backend(url)   # nothing connects until a verb is called
    assert isinstance(backend, RetryBackend) and backend.retry.attempts == 3
    assert backend.capabilities == capabilities
    assert backend.describe().startswith(url.partition("://")[0] + "://")


def test_a_client_library_loads_only_for_its_own_scheme(tmp_path):
    code = (f"import sys; from volbackup.repo.backends import open_backend; "
            f"open_backend({str(tmp_path)!r}); "
            f"print(sorted(m for m in ('boto3', 'paramiko', 'opendal') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_scheme_is_in_the_storage_doc():
    doc = (Path(__file__).parents[2] / "docs" / "storage.md").read_text()
    table = doc.split("## What each store can and cannot do")[0]  # the table of URL forms
    assert [name for name in SCHEMES if f"`{name}://" not in table] == []
