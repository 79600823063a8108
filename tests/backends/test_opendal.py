"""The WebDAV, Azure and Swift backend's own details (repo/backends/opendal.py): URLs and
credentials, errors as the user sees them, the one-PUT bound, WebDAV temp files, and Swift
tokens that expire. The contract itself is in test_contract.py."""

from __future__ import annotations

import pytest

from volbackup.errors import RepositoryDenied, RepositoryError, RepositoryUnreachable
from volbackup.repo.backends import BlobNotFound, RetryBackend, open_backend
from volbackup.repo.backends import opendal as od
from volbackup.repo.backends.retry import Retry

AZURITE_STRING = "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=c2VjcmV0;" \
                 "BlobEndpoint=http://127.0.0.1:10000/acct;"


# -- URLs and credentials (no server)

def test_webdav_url_and_credentials():
    service = od.webdav_config("webdavs://alice@nas.example:8443/backups/prod",
                               {"VOLBACKUP_WEBDAV_PASSWORD": "pw-secret"})
    assert service.scheme == "webdav"
    assert service.options == {"endpoint": "https://nas.example:8443", "root": "/backups/prod/",
                               "username": "alice", "password": "pw-secret"}
    assert service.where == "webdavs://nas.example:8443/backups/prod"
    plain = od.webdav_config("webdav://nas/", {"VOLBACKUP_WEBDAV_USER": "bob",
                                               "VOLBACKUP_WEBDAV_TOKEN": "tok"})
    assert plain.options == {"endpoint": "http://nas", "root": "/", "token": "tok"}
    assert "alice" not in service.where and "pw-secret" not in repr(service.where)


@pytest.mark.parametrize("url, words", [
    ("webdav://alice:pw-secret@nas/x", "takes no password"),
    ("webdav:///x", "needs a host"),
    ("webdav://nas:99999/x", "not valid"),
    ("webdav://nas/x?user=pw-secret", "no query"),
])
def test_bad_webdav_urls(url, words):
    with pytest.raises(RepositoryError, match=words) as caught:
        od.webdav_config(url, {})
    assert "pw-secret" not in str(caught.value)


def test_webdav_path_parts_are_checked():
    with pytest.raises(ValueError):
        od.webdav_config("webdav://nas/a/../b", {})


def test_azure_connection_string_and_account_variables():
    service = od.azure_config("azure://backups/prod/db", {"AZURE_STORAGE_CONNECTION_STRING":
                                                          AZURITE_STRING})
    assert service.options == {"endpoint": "http://127.0.0.1:10000/acct", "container": "backups",
                               "root": "/prod/db/", "account_name": "acct",
                               "account_key": "c2VjcmV0"}
    assert service.where == "azure://backups/prod/db" and service.endpoint == "http://127.0.0.1:10000"
    sas = od.azure_config("azure://backups", {"AZURE_STORAGE_ACCOUNT": "acct",
                                              "AZURE_STORAGE_SAS_TOKEN": "?sv=2024&sig=sas-secret"})
    assert sas.options == {"endpoint": "https://acct.blob.core.windows.net", "container": "backups",
                           "root": "/", "account_name": "acct",
                           "sas_token": "sv=2024&sig=sas-secret"}
    dev = od.azure_config("azure://c0n", {"AZURE_STORAGE_CONNECTION_STRING":
                                          "UseDevelopmentStorage=true"})
    assert dev.options["endpoint"] == "http://127.0.0.1:10000/devstoreaccount1"


@pytest.mark.parametrize("url, env, error, words", [
    ("azure://", {}, RepositoryError, "needs a container"),
    ("azure://Bad_Name", {"AZURE_STORAGE_ACCOUNT": "a"}, RepositoryError, "not an Azure container"),
    ("azure://key:secret@c/x", {}, RepositoryError, "takes no credentials"),
    ("azure://backups", {}, RepositoryDenied, "AZURE_STORAGE_CONNECTION_STRING"),
    ("azure://backups", {"AZURE_STORAGE_CONNECTION_STRING": "junk"}, RepositoryError,
     "no AccountName"),
])
def test_bad_azure_urls_and_missing_credentials(url, env, error, words):
    with pytest.raises(error, match=words) as caught:
        od.azure_config(url, env)
    assert "secret" not in str(caught.value)


def test_swift_token_or_v1_auth_is_needed():
    service = od.swift_config("swift://c/p", {"OS_STORAGE_URL": "https://swift.example/v1/AUTH_x/",
                                              "OS_AUTH_TOKEN": "tok-secret"})
    assert service.options == {"container": "c", "root": "/p/", "token": "tok-secret",
                               "endpoint": "https://swift.example/v1/AUTH_x"}
    assert service.endpoint == "https://swift.example" and service.refresh is None
    with pytest.raises(RepositoryDenied, match="ST_AUTH, ST_USER and ST_KEY"):
        od.swift_config("swift://c", {})


def test_an_unsupported_scheme_names_the_new_ones():
    with pytest.raises(RepositoryError, match="webdav.*azure://.*swift://"):
        open_backend("ftp://host/x")


# -- against the real servers

def _no_wait(retry: RetryBackend) -> RetryBackend:
    retry.retry = Retry(2, sleep=lambda s: None)
    retry.inner.retry = Retry(2, sleep=lambda s: None)
    return retry


def test_wrong_webdav_password_is_denied(webdav_repo, monkeypatch):
    monkeypatch.setenv("VOLBACKUP_WEBDAV_PASSWORD", "wrong-secret")
    backend = open_backend(webdav_repo)
    with pytest.raises(RepositoryDenied, match="refused access .*VOLBACKUP_WEBDAV_PASSWORD") as caught:
        backend.check(writable=False)
    assert "wrong-secret" not in str(caught.value) and "\n" not in str(caught.value)


def test_missing_webdav_directory_and_init_makes_it(webdav_repo):
    backend = open_backend(webdav_repo + "/below/new")
    with pytest.raises(RepositoryError, match="does not exist"):
        backend.check(writable=False)
    assert backend.create_missing() is True
    backend.check(writable=True)
    assert backend.create_missing() is False
    backend.remove_if_empty()
    with pytest.raises(RepositoryError, match="does not exist"):
        backend.check(writable=False)


def test_wrong_azure_key_is_denied(azure_repo, monkeypatch, azurite):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"AccountName=devstoreaccount1;AccountKey=d3Jvbmcta2V5;"
                       f"BlobEndpoint={azurite['endpoint']}")
    with pytest.raises(RepositoryDenied, match="refused access"):
        open_backend(azure_repo).check(writable=False)


def test_missing_azure_container(azure_env, monkeypatch):
    for name, value in azure_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RepositoryError, match="container of azure://vbtest-none does not exist"):
        open_backend("azure://vbtest-none").check(writable=False)


def test_a_sas_token_is_never_in_a_message(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"AccountName=devstoreaccount1;SharedAccessSignature=sv=1&sig=sas-secret;"
                       f"BlobEndpoint={azurite['endpoint']}")
    backend = open_backend("azure://vbtest-none/x")
    with pytest.raises(RepositoryError) as caught:
        backend.stat("a")
    assert "sas-secret" not in str(caught.value)


def test_wrong_swift_key_is_denied(swift_repo, monkeypatch):
    monkeypatch.setenv("ST_KEY", "wrong-secret")
    with pytest.raises(RepositoryDenied, match="rejected the Swift credentials") as caught:
        open_backend(swift_repo)
    assert "wrong-secret" not in str(caught.value)


def test_an_expired_swift_token_is_renewed(swift_repo):
    backend = open_backend(swift_repo)
    backend.write_bytes("a", b"1")
    inner = backend.inner
    inner.op = inner._operator({**inner.service.options, "token": "AUTH_expired"})
    with pytest.raises(od.TransientError, match="expired"):
        inner.stat("a")                     # refused, then authenticated again
    assert inner.stat("a").size == 1
    inner.op = inner._operator({**inner.service.options, "token": "AUTH_expired"})
    assert backend.read_bytes("a") == b"1"  # RetryBackend tries once more with the new token


@pytest.mark.parametrize("scheme", ["webdav", "azure", "swift"])
def test_a_server_that_does_not_answer_is_unreachable_after_retries(scheme, monkeypatch):
    from tests.conftest import free_port

    port = free_port()   # nothing listens there
    env = {"webdav": {"VOLBACKUP_WEBDAV_USER": "u", "VOLBACKUP_WEBDAV_PASSWORD": "p"},
           "azure": {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName=a;AccountKey=a2V5;"
                     f"BlobEndpoint=http://127.0.0.1:{port}/a"},
           "swift": {"OS_STORAGE_URL": f"http://127.0.0.1:{port}/v1", "OS_AUTH_TOKEN": "t"}}
    url = {"webdav": f"webdav://127.0.0.1:{port}/r", "azure": "azure://cont/r",
           "swift": "swift://cont/r"}[scheme]
    for name in ("OS_STORAGE_URL", "OS_AUTH_TOKEN", "ST_AUTH", "ST_USER", "ST_KEY",
                 "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env[scheme].items():
        monkeypatch.setenv(name, value)
    backend = _no_wait(open_backend(url))
    with pytest.raises(od.TransientError):
        backend.inner.stat("a")
    with pytest.raises(RepositoryUnreachable, match="cannot reach") as caught:
        backend.stat("a")
    assert not isinstance(caught.value, od.TransientError) and caught.value.exit_code == 10


def test_an_azure_stream_whose_server_is_gone_is_unreachable(monkeypatch):
    """OpenDAL's retry layer retries an Azure stream's blocks itself and then calls the
    error "persistent": still a server that cannot be reached (exit 10), not a refusal."""
    from tests.conftest import free_port

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=a;AccountKey=a2V5;"
                       f"BlobEndpoint=http://127.0.0.1:{free_port()}/a")
    monkeypatch.setenv("VOLBACKUP_STORE_ATTEMPTS", "2")
    backend = open_backend("azure://cont/r")
    with pytest.raises(RepositoryUnreachable, match="cannot reach") as caught:
        with backend.open_write("chunks/x") as writer:
            writer.write(b"x" * (od.AZURE_BLOCK + 1))
    assert caught.value.exit_code == 10


@pytest.mark.parametrize("repo", ["webdav_repo", "swift_repo"])
def test_a_blob_too_large_for_one_put_is_refused_and_leaves_nothing(repo, request, monkeypatch):
    backend = open_backend(request.getfixturevalue(repo))
    monkeypatch.setattr(od, "ONE_PUT_MAX", 1000)
    with pytest.raises(RepositoryError, match="larger than 0 MiB.*chunked repository"):
        with backend.open_write("snapshots/v/a.tar.zst") as writer:
            writer.write(b"x" * 600)
            writer.write(b"x" * 600)
    assert list(backend.list()) == []
    backend.write_bytes("ok", b"x" * 1000)
    assert backend.stat("ok").size == 1000


def test_webdav_temp_files_of_a_killed_write_are_found_and_removed(webdav_repo):
    backend = open_backend(webdav_repo)
    backend.write_bytes("chunks/ab/done", b"1")
    temp = "chunks/ab/.cafe.tmp-4242-0a1b2c3d-deadbeef"
    backend.inner.op.write(temp, b"partial")   # what a run killed before its MOVE leaves
    assert [i.key for i in backend.list()] == ["chunks/ab/done"]
    (found,) = backend.temp_files()
    assert (found.key, found.pid, found.place, found.size) == (temp, 4242, "0a1b2c3d", 7)
    with pytest.raises(ValueError):
        backend.remove_temp(type(found)("chunks/ab/done", 1, found.modified, 1))
    backend.remove_temp(found)
    assert backend.temp_files() == []
    assert [i.key for i in backend.list()] == ["chunks/ab/done"]
    with pytest.raises(BlobNotFound):
        backend.stat(temp.replace("/.", "/"))


def test_a_server_that_never_answers_times_out_as_transient(monkeypatch):
    """OpenDAL's HTTP client has no time limit of its own: a hung server must not hang a
    backup (the listener accepts nothing; the kernel completes the connection)."""
    import socket

    monkeypatch.setattr(od, "CONTROL_TIMEOUT", 1.0)
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        backend = od.OpenDALBackend(od.swift_config("swift://c/p", {
            "OS_STORAGE_URL": f"http://127.0.0.1:{port}/v1", "OS_AUTH_TOKEN": "t"}))
        with pytest.raises(od.TransientError, match="cannot reach"):
            backend.stat("a")
