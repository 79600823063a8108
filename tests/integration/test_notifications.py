"""Notifications through apprise, to real local receivers: an SMTP server (aiosmtpd) for
mailto://, an HTTP server for json://, and a port where nothing listens. The backup's result
and exit code never depend on the notification, and no token is ever printed."""

from __future__ import annotations

import email
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller

from tests.integration.helpers import fill

TOKEN = "T0KEN5ecr3t"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Inbox:
    def __init__(self):
        self.mails: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    inbox.url = (f"mailto://127.0.0.1:{controller.port}?from=vb@example.com"
                 f"&to=ops@example.com&name={TOKEN}")
    yield inbox
    controller.stop()


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.posts.append((self.path, json.loads(
            self.rfile.read(int(self.headers["Content-Length"])))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def json_receiver():
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"json://127.0.0.1:{server.server_port}/hooks/{TOKEN}"
    yield server
    server.shutdown()
    server.server_close()


def _body(mail) -> str:
    return next(p.get_payload(decode=True).decode() for p in mail.walk()
                if p.get_content_type() == "text/plain" and not p.get_filename())


def test_a_failed_volume_reaches_email_and_json(cli, repo_dir, make_volume, mountpoint, smtp,
                                                json_receiver):
    """Email: a title and a body naming the failed volume and why, the sizes of the others,
    the host; the summary attached. json://: the summary itself."""
    good = make_volume("good").name
    fill(mountpoint(good), {"a.bin": b"x" * 300_000})
    missing = good + "-missing"
    result = cli("backup", good, missing, "-r", str(repo_dir), "--notify-url", smtp.url,
                 "--notify-url", json_receiver.url)
    assert result.code == 3, result.stderr
    assert "notification" not in result.stderr, result.stderr
    (mail,) = smtp.mails
    host = socket.gethostname()
    assert mail["Subject"] == f"volbackup backup on {host}: 1 of 2 volumes failed"
    body = _body(mail)
    assert f"FAILED {missing}: " in body and "no such volume" in body, body
    assert f"ok {good}: 297.0 KiB -> " in body and f"host {host}" in body, body
    (attached,) = [p for p in mail.walk() if p.get_filename() == "volbackup-run.json"]
    summary = json.loads(attached.get_payload(decode=True))
    assert summary["status"] == "failed" and summary["exit_code"] == 3
    ((path, post),) = json_receiver.posts
    assert path == f"/hooks/{TOKEN}" and post["type"] == "failure"
    assert post["title"] == mail["Subject"]
    sent = json.loads(post["message"])
    assert [v["volume"] for v in sent["volumes"]] == [good, missing]
    assert sent["volumes"][1]["status"] == "failed" and sent["host"] == host


def test_success_is_sent_only_with_notify_always(cli, repo_dir, make_volume, mountpoint,
                                                 json_receiver):
    name = make_volume("ok").name
    fill(mountpoint(name), {"a.txt": b"hello\n"})
    assert cli("backup", name, "-r", str(repo_dir), "--notify-url", json_receiver.url).code == 0
    assert json_receiver.posts == []
    result = cli("backup", name, "-r", str(repo_dir), "--notify-url", json_receiver.url,
                 "--notify", "always")
    assert result.code == 0 and result.stderr == "", result.stderr
    ((_, post),) = json_receiver.posts
    assert post["type"] == "success" and json.loads(post["message"])["status"] == "ok"


@pytest.mark.parametrize("scheme", ["json", "mailto"])
def test_a_receiver_that_is_down_changes_nothing_and_shows_no_token(
        cli, repo_dir, make_volume, mountpoint, json_receiver, scheme):
    """With --debug (apprise's own logging at its most talkative): one line says the
    notification failed, the exit code is the backup's, the token appears nowhere; the
    other receiver still gets its message."""
    name = make_volume("down").name
    fill(mountpoint(name), {"a.txt": b"hello\n"})
    port = _free_port()
    dead = {"json": f"json://user{TOKEN}:pw{TOKEN}@127.0.0.1:{port}/hooks/{TOKEN}?t={TOKEN}",
            "mailto": f"mailto://user:{TOKEN}@example.com:{port}?smtp=127.0.0.1"
                      f"&from=vb@example.com&to=ops@example.com"}[scheme]
    for missing, code in (("", 0), ("-missing", 4)):
        result = cli("--debug", "backup", name + missing, "-r", str(repo_dir), "--notify",
                     "always", "--notify-url", dead, "--notify-url", json_receiver.url)
        assert result.code == code, result.stderr
        assert TOKEN not in result.stdout + result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if "notification" in line]
        shown = {"json": "json://127.0.0.1", "mailto": "mailto://example.com"}[scheme]
        assert len(lines) == 1, result.stderr
        assert f"the notification to {shown}:{port} failed: " in lines[0], result.stderr
        assert "(the run's own result is unchanged)" in lines[0]
    assert len(json_receiver.posts) == 2


def test_run_config_takes_a_list_and_checks_it_at_load(cli, repo_dir, tmp_path, make_volume,
                                                       mountpoint, smtp, json_receiver):
    name = make_volume("cfg").name
    fill(mountpoint(name), {"a.txt": b"hello\n"})
    config = tmp_path / "c.toml"
    config.write_text(f'[jobs.nightly]\nrepository = "{repo_dir}"\nvolumes = ["{name}"]\n'
                      f'notify = "always"\n'
                      f'notify_url = ["{smtp.url}", "{json_receiver.url}"]\n')
    result = cli("run", "--config", str(config))
    assert result.code == 0, result.stderr
    assert smtp.mails[0]["Subject"] == f"volbackup nightly on {socket.gethostname()}: ok"
    assert json.loads(json_receiver.posts[0][1]["message"])["job"] == "nightly"

    config.write_text(f'[jobs.nightly]\nrepository = "{repo_dir}"\nvolumes = ["{name}"]\n'
                      f'notify_url = ["{json_receiver.url}", "slak://x/{TOKEN}"]\n')
    result = cli("run", "--config", str(config))
    assert result.code == 12 and TOKEN not in result.stderr + result.stdout, result.stderr
    assert result.stderr.count("\n") == 1 and "URL 2 of 2: apprise does not understand this slak:// URL" \
        in result.stderr, result.stderr


@pytest.mark.parametrize("url", [f"slack://{TOKEN}", f"nope://h/{TOKEN}", f"h/{TOKEN}"])
def test_a_url_apprise_does_not_understand_is_a_usage_error(cli, repo_dir, url):
    result = cli("backup", "anything", "-r", str(repo_dir), "--notify-url", url)
    assert result.code == 2 and TOKEN not in result.stderr, result.stderr
    assert "--notify-url" in result.stderr and "Traceback" not in result.stderr
