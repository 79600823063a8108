"""Notifications of a run: a plain https JSON POST, or any service apprise knows.

`http(s)://` URLs keep the POST of the JSON summary (volbackup.ops.report.notify), as
documented since the first release. Every other URL (`ntfy://`, `slack://`, `mailto://`,
`json://`...) goes through apprise, one service per URL, so one dead receiver does not hide
another's delivery: a person gets a title and a short body (which volumes failed and why,
sizes, duration, host) with the JSON summary attached where the service takes files, and
`json://` gets the summary itself as its message. Nothing here raises, and no message shows
more of a URL than its scheme and host: webhook tokens live in the path, passwords in the
user info or the query.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote

from volbackup.ops import report
from volbackup.timefmt import human_bytes
from volbackup.urls import safe_url, scrub

PLAIN = ("http://", "https://")
JSON_SCHEMES = ("json", "jsons")   # apprise's generic JSON POST: gets the summary as its body

# apprise logs a failed delivery itself; without a handler of ours, Python's last-resort
# handler would print it to stderr, and a service's own text may quote its URL. Its words
# reach the user only through `_why`, scrubbed.
_APPRISE_LOG = logging.getLogger("apprise")
_APPRISE_LOG.addHandler(logging.NullHandler())
_APPRISE_LOG.propagate = False


def check_url(url: str) -> str | None:
    """None when `url` can be notified, else why not (one line, without the URL's secrets)."""
    if not isinstance(url, str) or "://" not in url:
        return "not a URL (expected https://... or an apprise URL such as ntfy://...)"
    if url.lower().startswith(PLAIN):
        return None
    import apprise

    if apprise.Apprise.instantiate(url) is None:
        return (f"apprise does not understand this {safe_url(url).split('://')[0]}:// URL "
                "(https://github.com/caronc/apprise/wiki lists the services and their URLs)")
    return None


def notify(urls: list[str], summary: dict) -> list[str]:
    """Send `summary` to every URL; the problems, one line each (never raises)."""
    problems = []
    for url in urls:
        try:
            problem = (report.notify(url, summary) if url.lower().startswith(PLAIN)
                       else _apprise(url, summary))
        except Exception as e:  # a bug in a service plugin is not the run's failure
            problem = f"the notification to {safe_url(url)} failed: {type(e).__name__}"
        if problem:
            problems.append(_redact(problem, url))
    return problems


def _apprise(url: str, summary: dict) -> str | None:
    import apprise
    from apprise.attachment.memory import AttachMemory

    service = apprise.Apprise()
    if not service.add(url):
        return f"the notification to {safe_url(url)} failed: apprise does not understand the URL"
    scheme = url.partition("://")[0].lower()
    title, body = message(summary)
    attach = None
    if scheme in JSON_SCHEMES:
        body = json.dumps(summary, indent=1)
    elif all(getattr(plugin, "attachment_support", False) for plugin in service):
        attach = AttachMemory(content=json.dumps(summary, indent=1), name="volbackup-run.json",
                              mimetype="application/json")
    said: list[str] = []
    failed = summary["status"] != "ok"
    result = service.notify(
        body=body, title=title, attach=attach, body_format=apprise.NotifyFormat.TEXT,
        notify_type=apprise.NotifyType.FAILURE if failed else apprise.NotifyType.SUCCESS,
        timeout=report.NOTIFY_TIMEOUT, log_level=logging.WARNING,
        log_callback=lambda entry, _plugin: said.append(str(entry.message)))
    if result:
        return None
    return f"the notification to {safe_url(url)} failed: {_why(said)}"


def _why(said: list[str]) -> str:
    """apprise's last warning, scrubbed and on one line; it names the host, not the URL."""
    text = " ".join(said[-1].split()) if said else "the service did not accept it"
    return scrub(text)[:300]


# Query keys of apprise URLs whose values name a server or an address, not a secret.
_PLAIN_QUERY_KEYS = {"smtp", "from", "to", "cc", "bcc", "mode", "format", "port"}


def _redact(text: str, url: str) -> str:
    """`text` without any piece of `url` beyond its scheme and host: a plugin's message could
    quote a token bare, outside a URL that `scrub` would cut."""
    shown = safe_url(url).lower()
    rest, _, query = url.partition("://")[2].partition("?")
    raw = re.split(r"[/:@#]", rest) + [value for key, _, value in
                                       (pair.partition("=") for pair in query.split("&"))
                                       if key.lower() not in _PLAIN_QUERY_KEYS]
    pieces = {p for r in raw for p in (r, unquote(r)) if len(p) >= 4 and p.lower() not in shown}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


def message(summary: dict) -> tuple[str, str]:
    """A title and a body a person reads on a phone."""
    volumes = summary.get("volumes") or []
    failed = [v for v in volumes if v["status"] == "failed"]
    ok = summary["status"] == "ok"
    what = "ok" if ok else (f"{len(failed)} of {len(volumes)} volumes failed" if failed
                            else "failed")
    title = f"volbackup {summary['job']} on {summary['host']}: {what}"
    lines = []
    if not ok and summary.get("message"):
        lines.append(f"{summary['message']} (exit {summary['exit_code']})")
    for v in failed:
        lines.append(f"FAILED {v['volume']}: {v.get('message') or 'no reason given'}")
    for v in volumes:
        if v["status"] == "skipped":
            lines.append(f"skipped {v['volume']}: {v.get('message') or ''}".rstrip(": "))
        elif v["status"] != "failed":
            cache = v.get("files_cache") or {}
            unchanged = (f", {cache['files_reused']} unchanged files not read"
                         if cache.get("files_reused") else "")
            lines.append(f"ok {v['volume']}: {_size(v.get('bytes', 0))} -> "
                         f"{_size(v.get('stored_bytes', 0))} in {v.get('seconds', 0):.1f}s"
                         f"{unchanged}")
    total = sum(v.get("bytes", 0) for v in volumes if v["status"] not in ("failed", "skipped"))
    prune = summary.get("prune")
    if prune:
        lines.append(f"prune: {prune['kept']} kept, {prune['removed']} removed")
    lines.append(f"{len(volumes)} volumes, {_size(total)} in {summary['seconds']:.1f}s "
                 f"to {summary['repository']}")
    lines.append(f"host {summary['host']}, finished {summary['finished']}, "
                 f"volbackup {summary['tool_version']}")
    return title, "\n".join(lines)


_size = human_bytes
