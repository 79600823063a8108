"""volbackup.urls: the one scrubber. Scheme and host of a URL, never what hides a token."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from volbackup.urls import safe_url, scrub

SECRET = "s3cr3t"


@pytest.mark.parametrize("url,shown", [
    (f"https://hooks.slack.com/services/T0/B0/{SECRET}", "https://hooks.slack.com"),
    (f"https://discord.com/api/webhooks/1/{SECRET}?wait=true", "https://discord.com"),
    (f"http://user:{SECRET}@alerts.example.com:8080/x?t={SECRET}#{SECRET}",
     "http://alerts.example.com:8080"),
    (f"HTTPS://{SECRET}@Example.COM/", "https://example.com"),
    (f"http://[::1]:9/{SECRET}", "http://[::1]:9"),
    (f"http://alerts.example.com:{SECRET}/x", "http://?"),          # a bad port
    (f"http://user:pa/{SECRET}@host/x", "http://?"),               # a "/" in the password
    (f"http://[{SECRET}/x", "http://?"),
    (f"tcp://admin:{SECRET}@10.0.0.5:2376", "tcp://10.0.0.5:2376"),
    (f"ssh://{SECRET}@db1", "ssh://db1"),
    ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),  # a local file: kept
    (f"unix:///run/docker.sock?x={SECRET}", "unix:///run/docker.sock"),
    ("/var/run/docker.sock", "/var/run/docker.sock"),
    (f"hooks.slack.com/services/{SECRET}", "(not a URL)"),
    (None, "(not a URL)"),
])
def test_safe_url_shows_scheme_and_host_only(url, shown):
    assert safe_url(url) == shown
    assert SECRET not in safe_url(url)


def test_scrub_cuts_every_url_in_a_message_and_keeps_the_rest():
    text = (f"500 Server Error for http+docker://localhost/v1.41/containers/x/archive?path="
            f"%2F{SECRET}: boom. See 'https://u:{SECRET}@h.example/{SECRET}', then "
            f"ftp://h2/{SECRET}.")
    assert scrub(text) == ("500 Server Error for http+docker://localhost: boom. See "
                           "'https://h.example', then ftp://h2.")


@pytest.mark.parametrize("endpoint", [f"http://user:{SECRET}@127.0.0.1:9/{SECRET}",
                                      f"not a url/{SECRET}"])
def test_an_s3_endpoint_is_never_shown_whole(endpoint):
    """AWS_ENDPOINT_URL that cannot be reached, or is no URL: one line, no secret."""
    result = run_cli("list", "-r", "s3://bucket/prefix", env={
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}, timeout=120)
    assert result.code in (5, 10), result.stderr
    assert SECRET not in result.stderr + result.stdout and "Traceback" not in result.stderr
