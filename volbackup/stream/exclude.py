"""`backup --exclude-path`: which paths of a volume to leave out, and a tar filter that
leaves them out of a stream before it is packed.

One Python matcher decides for the direct path (GNU tar) and the engine path (a helper's
archive endpoint) alike, so the two cannot differ. The semantics are in
docs/user-guide.md ("Leaving paths out"): a pattern is matched against the path relative
to the volume root; without `/` it matches one component at any depth, with `/` it is
anchored at the root; `*`, `?` and `[...]` stay inside one component, a `**` component
matches any number of them; an excluded directory takes everything beneath it along.
"""

from __future__ import annotations

import re
import tarfile
from contextlib import AbstractContextManager
from typing import Callable, Iterable, Iterator

from volbackup.errors import BadPattern, StreamBroken
from volbackup.stream.tarstream import BLOCK, Entry, TarWalker, normal_name, shown

MAX_PATTERN = 4096   # a path is at most 4 KiB on Linux; a longer pattern is a mistake
MAX_PATTERNS = 1000


def parse_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns, each checked and normalised (leading and trailing `/` dropped; a
    leading `/` is remembered as anchoring). Raises BadPattern for the first bad one."""
    out = []
    for pattern in patterns:
        _compile(pattern)
        if pattern not in out:
            out.append(pattern)
    if len(out) > MAX_PATTERNS:
        raise BadPattern(f"more than {MAX_PATTERNS} exclude patterns")
    return out


def split_label(value: str) -> list[str]:
    """A volbackup.exclude label: patterns separated by commas or newlines (blank ones and
    surrounding spaces ignored)."""
    return [p.strip() for p in re.split(r"[,\n]", value) if p.strip()]


class Matcher:
    """Decides whether a member of a volume's tar stream is left out.

    All patterns are one regular expression, matched once from the start of a path: it
    succeeds when a pattern matches the path up to a `/` or its end (the path, or a
    directory above it). The expression never backtracks over more than one choice
    (see `_compile`), so matching costs at most about (path length) x (pattern length)
    steps, whatever the pattern: none has to be refused for being slow.
    """

    def __init__(self, patterns: Iterable[str]):
        self.patterns = parse_patterns(patterns)
        regexes = [_compile(p, f"p{i}_") for i, p in enumerate(self.patterns)]
        self._regex = re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL) \
            if regexes else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def excludes(self, name: str) -> bool:
        """True when `name` (a member name: `./a/b`, `a/b/`) or a directory above it
        matches a pattern. The volume root is never excluded."""
        if self._regex is None:
            return False
        path = normal_name(name)
        if path == ".":
            return False
        return self._regex.match(path) is not None


_END = "(?![^/])"          # at the end of a component: a `/` or the end of the path
_COMPONENTS = "(?:[^/]+/)*?"  # a `**`: any number of components, fewest first


class _Atomic:
    """`(?>x)` for Python 3.10 too: a lookahead is never backtracked into, and the
    backreference then consumes what it matched. Names are unique per expression."""

    def __init__(self, tag: str):
        self.tag, self.count = tag, 0

    def __call__(self, body: str) -> str:
        self.count += 1
        name = f"{self.tag}{self.count}"
        return f"(?=(?P<{name}>{body}))(?P={name})"


def _compile(pattern: str, tag: str = "p_") -> str:
    """The regular expression of one pattern, for `re.match` on a relative path: it
    matches a prefix of the path that ends at a `/` or the end when the pattern
    matches that prefix (docs/user-guide.md, "Leaving paths out").

    Linear by construction: a component glob is matched atomically (it can match a
    whole component in one way only; its stars in the classic greedy way, each middle
    piece at its leftmost place); a `**` is tried with the fewest components first,
    atomically with the components after it (their leftmost place is always the best,
    as for a star within a component). Consecutive `**` are one. So nothing is retried
    but the component where the next piece starts."""
    def bad(why: str) -> BadPattern:
        return BadPattern(f"exclude pattern {shown(pattern)} {why}")

    if not isinstance(pattern, str) or not pattern:
        raise bad("is empty")
    if "\x00" in pattern:
        raise bad("holds a NUL")
    if len(pattern) > MAX_PATTERN:
        raise bad(f"is longer than {MAX_PATTERN} characters")
    body = pattern.lstrip("/").rstrip("/")
    if not body:
        raise bad("names the volume root, which cannot be left out")
    parts = body.split("/")
    for part in parts:
        if part in (".", ".."):
            raise bad(f"has a '{part}' component (patterns are relative to the volume root)")
        if not part:
            raise bad("has an empty component ('//')")
    atomic = _Atomic(tag)
    if not (pattern.startswith("/") or len(parts) > 1):  # one component, at any depth
        glob = "[^/]+" + _END if parts[0] == "**" else _component(parts[0], bad, atomic)
        out = "(?:[^/]*/)*?" + glob
    else:
        out = _anchored(parts, bad, atomic)
    try:
        re.compile(out)
    except re.error as e:
        raise bad(f"is invalid ({e})") from None
    return out


def _anchored(parts: list[str], bad, atomic: _Atomic) -> str:
    """An anchored pattern's components: runs of globs between `**` components."""
    runs: list[list[str]] = [[]]
    for part in parts:
        if part != "**":
            runs[-1].append(_component(part, bad, atomic))
        elif runs[-1] or len(runs) == 1:
            runs.append([])  # `**/**` is `**`
    out = ["/".join(runs[0])] if runs[0] else []
    for run in runs[1:]:  # each after a `**`; an empty one is a final `**`
        out.append(atomic(_COMPONENTS + "/".join(run)) if run else "[^/]+" + _END)
    return "/".join(out)


def _component(part: str, bad, atomic: _Atomic) -> str:
    """One path component's glob as a regex that matches a whole component (never a
    `/`) in at most one way: pieces between stars are placed leftmost, the last one
    at the end."""
    pieces: list[str] = [""]   # the fixed-length pieces, split at stars
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            while i < n and part[i] == "*":  # `a**b` is `a*b`: only a whole `**` is special
                i += 1
            pieces.append("")
        elif c == "?":
            pieces[-1] += "[^/]"
        elif c == "[":
            j = i
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            j = part.find("]", j)
            if j < 0:
                pieces[-1] += re.escape(c)  # no closing `]`: a plain `[`
                continue
            content, i = part[i:j], j + 1
            negate = content[:1] in ("!", "^")
            if negate:
                content = content[1:]
            chars = []
            for k, ch in enumerate(content):
                keep_range = ch == "-" and 0 < k < len(content) - 1
                chars.append("-" if keep_range else re.escape(ch))
            body = "".join(chars)
            try:
                re.compile(f"[{body}]")
            except re.error:
                raise bad(f"has an invalid character class [{content}]") from None
            pieces[-1] += f"[^/{body}]" if negate else f"(?!/)[{body}]"
        else:
            pieces[-1] += re.escape(c)
    if len(pieces) == 1:
        return pieces[0] + _END
    middle = "".join(atomic("[^/]*?" + piece) for piece in pieces[1:-1])
    return atomic(pieces[0] + middle + "[^/]*" + pieces[-1] + _END)


Refetch = Callable[[str], AbstractContextManager[Iterable[bytes]]]
MAX_RELINKED = 100_000  # hard-linked files whose first name is left out, per volume


def filter_tar(pieces: Iterable[bytes], matcher: Matcher,
               refetch: Refetch | None = None) -> Iterator[bytes]:
    """The tar stream `pieces` without the members `matcher` excludes: their headers
    (PAX and GNU long-name ones too), data and padding are dropped as they pass.

    Hard links: tar stores a file's data under the first name it meets and links later
    names to it. When the patterns leave out that first name and keep a later one, the
    first kept name becomes a regular file again, its data read once more from the
    volume with `refetch(path)` (a tar stream holding that one file: GNU tar or the
    engine, as for the whole volume), and further kept names link to it. Without
    `refetch` such a link fails the backup (BadPattern), rather than store a link that
    cannot be restored.

    Memory: the bytes of the member whose headers are being read (at most
    tarstream.MAX_EXTENDED, its extended headers) and the names of those re-made files.
    Structure errors are the walker's (IntegrityError); what follows the end-of-archive
    marker passes as is.
    """
    if not matcher:
        yield from pieces
        return
    walker = TarWalker(keep_first=False, unique=False)  # the packer's walker checks
    drops: list[list] = []   # [start, end, insert] of excluded or replaced members not passed
    relinked: dict[str, str] = {}  # left-out first name -> the kept name that holds the data

    def on_member(start: int, data_at: int, entry: Entry) -> None:
        if not matcher.excludes(entry.name):
            if entry.type == tarfile.LNKTYPE and matcher.excludes(entry.linkname):
                drops.append([start, data_at, _relink(entry, relinked, refetch)])
            return
        end = data_at + -(-entry.size // BLOCK) * BLOCK
        if drops and drops[-1][1] == start and drops[-1][2] is None:
            drops[-1][1] = end
        else:
            drops.append([start, end, None])

    walker.on_member = on_member
    held = b""       # bytes from `held_at` that are not decided yet
    held_at = 0
    for piece in pieces:
        piece_at = walker.bytes
        walker.feed(piece)
        settled = walker.settled if not walker.ended else walker.bytes
        yield from _kept(held, held_at, piece, piece_at, settled, drops)
        if settled < piece_at:
            held = held[:piece_at - held_at][settled - held_at:] + bytes(piece)
            held_at = settled
        else:
            held, held_at = bytes(piece[settled - piece_at:]), settled
        while drops and drops[0][1] <= settled:
            drops.pop(0)
    if held:
        yield held  # a truncated stream stays truncated: the packer's walker says so


def _relink(link: Entry, relinked: dict[str, str], refetch: Refetch | None):
    """What replaces a kept hard link whose target is left out: a link to the kept name
    that was re-made first, or (the first such name) the file itself, read again."""
    name, target = normal_name(link.name), normal_name(link.linkname)
    if target in relinked:
        info = _header(link, link.name, tarfile.LNKTYPE)
        info.linkname = "./" + relinked[target]
        return lambda: iter([info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")])
    if refetch is None or len(relinked) >= MAX_RELINKED:
        raise BadPattern(
            f"{shown(name)} is a hard link to {shown(target)}, which the exclude patterns "
            f"leave out: exclude both or neither (nothing was written)")
    relinked[target] = name
    return lambda: _file_again(link, target, refetch)


def _file_again(link: Entry, target: str, refetch: Refetch) -> Iterator[bytes]:
    """The member of the regular file `target` (read again) under the link's name."""
    walker = TarWalker(keep_first=False, unique=False)  # one file
    found: list[tuple[int, Entry]] = []

    def on_member(start: int, data_at: int, entry: Entry) -> None:
        if not found and entry.type in tarfile.REGULAR_TYPES:
            found.append((data_at, entry))

    walker.on_member = on_member
    done, started = 0, False
    with refetch(target) as pieces:
        for piece in pieces:
            at = walker.bytes
            walker.feed(piece)
            if not found:
                continue
            data_at, entry = found[0]
            if not started:
                started = True
                info = _header(entry, link.name, tarfile.REGTYPE)
                yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            end = data_at + entry.size
            a, b = max(at, data_at + done), min(at + len(piece), end)
            if a < b:
                yield bytes(piece[a - at:b - at])
                done += b - a
        walker.finish()
    if not found:
        raise StreamBroken(f"{shown(target)} changed while the volume was read (it is no "
                           f"longer a regular file; needed for its hard link "
                           f"{shown(normal_name(link.name))})")
    yield bytes(-found[0][1].size % BLOCK)


def _header(entry: Entry, name: str, type_: bytes) -> tarfile.TarInfo:
    """A header for `name` with `entry`'s owner, mode, times, size and PAX records (sparse
    maps and xattrs included), except those that name it."""
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode, info.uid, info.gid, info.mtime = entry.mode & 0o7777, entry.uid, entry.gid, \
        entry.mtime
    info.size = entry.size if type_ in tarfile.REGULAR_TYPES else 0
    info.pax_headers = {k: v for k, v in entry.pax.items()
                        if k not in ("path", "linkpath", "size", "uid", "gid")}
    if "GNU.sparse.name" in info.pax_headers:
        info.pax_headers["GNU.sparse.name"] = name
    return info


def _kept(held: bytes, held_at: int, piece, piece_at: int, settled: int,
          drops: list[list]) -> Iterator[bytes]:
    """The bytes of [held_at, settled) that no drop covers, from `held` and `piece`, with
    what replaces a dropped member where it was."""
    def between(a: int, b: int) -> Iterator[bytes]:
        if a >= b:
            return
        if a < piece_at:
            yield bytes(held[a - held_at:min(b, piece_at) - held_at])
        if b > piece_at:
            if a <= piece_at and b - piece_at == len(piece):
                yield piece  # the usual case: the whole piece, not copied
            else:
                yield bytes(piece[max(a, piece_at) - piece_at:b - piece_at])

    pos = held_at
    for drop in drops:
        start, end, insert = drop
        if end <= pos and insert is None:
            continue
        if start >= settled:
            break
        yield from (b for b in between(pos, min(start, settled)) if b)
        if insert is not None:
            drop[2] = None
            yield from insert()
        pos = max(pos, end)
    yield from (b for b in between(pos, settled) if b)
