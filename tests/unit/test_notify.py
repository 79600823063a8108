"""What a person reads on a phone, URL checks, and that no piece of a URL's secret leaks."""

from __future__ import annotations

import pytest

from volbackup.ops import notify

SUMMARY = {
    "job": "db", "host": "db1", "repository": "/srv/backups", "status": "failed",
    "exit_code": 3, "message": "1 of 3 volumes failed: pgwal", "seconds": 12.5,
    "finished": "2026-12-02T03:15:12Z", "tool_version": "0.1.0",
    "volumes": [
        {"volume": "pgdata", "status": "ok", "bytes": 5 << 20, "stored_bytes": 1 << 20,
         "seconds": 3.25},
        {"volume": "pgwal", "status": "failed", "message": "no such volume: pgwal"},
        {"volume": "sock", "status": "skipped", "message": "a socket bind"},
    ],
    "prune": {"kept": 4, "removed": 1},
}


def test_the_message_says_what_failed_and_why():
    title, body = notify.message(SUMMARY)
    assert title == "volbackup db on db1: 1 of 3 volumes failed"
    assert body.splitlines() == [
        "1 of 3 volumes failed: pgwal (exit 3)",
        "FAILED pgwal: no such volume: pgwal",
        "ok pgdata: 5.0 MiB -> 1.0 MiB in 3.2s",
        "skipped sock: a socket bind",
        "prune: 4 kept, 1 removed",
        "3 volumes, 5.0 MiB in 12.5s to /srv/backups",
        "host db1, finished 2026-12-02T03:15:12Z, volbackup 0.1.0",
    ]


def test_the_message_says_how_many_files_were_unchanged():
    cache = {"parent": "pgdata@x", "files_read": 3, "bytes_read": 1, "files_reused": 97,
             "bytes_reused": 1, "problem": None}
    volumes = [{**SUMMARY["volumes"][0], "files_cache": cache},
               {**SUMMARY["volumes"][0], "volume": "first",
                "files_cache": {**cache, "parent": None, "files_reused": 0}}]
    _, body = notify.message({**SUMMARY, "volumes": volumes})
    assert "ok pgdata: 5.0 MiB -> 1.0 MiB in 3.2s, 97 unchanged files not read" in body
    assert "ok first: 5.0 MiB -> 1.0 MiB in 3.2s\n" in body


def test_a_run_that_never_started_still_says_why():
    title, body = notify.message({**SUMMARY, "volumes": [], "prune": None, "exit_code": 5,
                                  "message": "repository s3://b is not reachable"})
    assert title == "volbackup db on db1: failed"
    assert body.startswith("repository s3://b is not reachable (exit 5)\n")


@pytest.mark.parametrize("url", ["https://h/x", "ntfy://ntfy.sh/topic", "slack://T1/B2/C3",
                                 "discord://1234/abcd", "tgram://123456:ABC/777",
                                 "mailto://u:p@example.com", "json://127.0.0.1:8/x",
                                 "gotify://h/TOKEN"])
def test_urls_apprise_understands(url):
    assert notify.check_url(url) is None


@pytest.mark.parametrize("url", ["slack://", "nope://h/SECRET", "h/SECRET", "", "ftp://h/SECRET"])
def test_urls_it_does_not_are_refused_without_their_secret(url):
    problem = notify.check_url(url)
    assert problem and "SECRET" not in problem and "\n" not in problem


def test_redact_hides_every_piece_of_the_url_but_scheme_host_and_servers():
    url = "mailto://userSECRET:pwSECRET@example.com:25?smtp=mail.lan&to=ops@x.org&pass=qSECRET"
    text = "failed for userSECRET pwSECRET qSECRET at example.com via mail.lan to ops@x.org"
    shown = notify._redact(text, url)
    assert "SECRET" not in shown and "example.com" in shown and "mail.lan" in shown
    assert "ops@x.org" in shown


def test_a_dead_receiver_is_one_line_without_the_token():
    (problem,) = notify.notify(["json://127.0.0.1:9/hooks/SECRET?t=SECRET"], SUMMARY)
    assert problem.startswith("the notification to json://127.0.0.1:9 failed: ")
    assert "SECRET" not in problem and "\n" not in problem
