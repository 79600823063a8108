"""URLs in messages: scheme and host only. The one scrubber; every message that shows a URL
uses it.

Webhook tokens (Slack, Discord, ...) live in the path, other secrets in the user info, the
query or the fragment, so none of those is ever printed. The exception is a local socket
(`unix://`, `npipe://`): its path is a file on this host, not a secret, and is how the
engine is found. A leaf module: it imports nothing of volbackup.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_LOCAL_SOCKETS = ("unix", "npipe")
# A URL inside free text: a scheme, "://", then everything up to a space or a quote.
_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>()\[\]{},]*""")


def safe_url(url: str | None) -> str:
    """`scheme://host[:port]` of `url`; never its user, password, path, query or fragment.

    Never raises: what cannot be parsed is shown as `scheme://?`.
    """
    text = str(url or "")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text if text.startswith("/") else "(not a URL)"  # a socket path, or junk
    scheme = scheme.lower() if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else "?"
    if scheme in _LOCAL_SOCKETS:
        return f"{scheme}://" + re.split(r"[?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # a bad port, or brackets that do not close
        return f"{scheme}://?"
    if not re.fullmatch(r"[A-Za-z0-9._:%-]*", host):
        return f"{scheme}://?"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


# Mount options whose value is a secret, or names the file that holds one (CIFS volumes
# carry them, and the engine repeats them in its mount errors).
SECRET_OPTION = re.compile(
    r"(?i)(?<![\w-])(password|passwd|pass|pwd|credentials|cred|secret|token)=[^,\s'\"}]*")


def scrub(text: str) -> str:
    """`text` with every URL in it cut down to `safe_url`, and the value of every secret
    mount option (`password=...`) hidden (for messages of other libraries)."""
    def one(match: re.Match) -> str:
        url = match[0].rstrip(".,:;!?")
        return safe_url(url) + match[0][len(url):]  # keep the sentence's own punctuation
    return SECRET_OPTION.sub(r"\1=***", _IN_TEXT.sub(one, str(text)))
