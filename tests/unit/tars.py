"""Tar inputs for the unit tests, built with Python's tarfile, and odd chunkings of bytes.

The corpus is made like the engine's archives: the volume root `./` first, then `./x`
members. It holds every kind of entry the walker must get through.
"""

from __future__ import annotations

import copy
import io
import random
import tarfile

BIG_FILE_BYTES = (1 << 20) + 12345   # more than one READ_CHUNK (1 MiB)
ROOT_XATTR = ("SCHILY.xattr.user.note", "root-xattr")
LONG_NAME = "./" + "n" * 120                                      # > 100 bytes
LONGER_NAME = "./" + "/".join(["d" * 90] * 2) + "/" + "f" * 90    # > 250 bytes
NON_UTF8_NAME = b"./latin1-\xe9\xff.bin".decode("utf-8", "surrogateescape")
LONG_TARGET = "../" + "t" * 150
CHUNKINGS = [1, 511, 512, 513, 4096, "random"]


def _info(name: str, type_: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 0,
          gid: int = 0, mtime: float = 1_600_000_000, linkname: str = "",
          pax: dict | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = type_, mode, uid, gid, mtime
    info.linkname = linkname
    info.pax_headers = dict(pax or {})
    return info


def corpus_members(big: bool = True) -> list[tuple[tarfile.TarInfo, bytes]]:
    """(TarInfo, data) pairs: the root first, then one member of each kind."""
    rnd = random.Random(7)
    members = [
        (_info("./", tarfile.DIRTYPE, 0o1750, 3_000_000, 3_000_001, 1_600_000_000.5,
               pax=dict([ROOT_XATTR])), b""),
        (_info("./hello.txt"), b"hello, volume\n"),
        (_info("./empty"), b""),
        (_info("./exactly-one-block", mode=0o600), bytes(range(256)) * 2),
        (_info("./big-ids", uid=3_000_000, gid=3_000_001), b"owned by a big uid\n"),
        (_info("./dir/", tarfile.DIRTYPE, 0o2775), b""),
        (_info("./dir/link", tarfile.SYMTYPE, 0o777, linkname="../hello.txt"), b""),
        (_info("./dir/long-link", tarfile.SYMTYPE, 0o777, linkname=LONG_TARGET), b""),
        (_info("./dir/hard", tarfile.LNKTYPE, linkname="./hello.txt"), b""),
        (_info("./fifo", tarfile.FIFOTYPE, 0o640), b""),
        (_info(LONG_NAME), b"long name\n"),
        (_info(LONGER_NAME), b"longer name\n"),
        (_info(NON_UTF8_NAME), b"non-UTF-8 name\n"),
        (_info("./caf\u00e9-\u65e5\u672c.txt"), b"UTF-8 name\n"),
    ]
    if big:
        members.append((_info("./big.bin"), rnd.randbytes(BIG_FILE_BYTES)))
    return members


def make_tar(members, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            info = copy.copy(info)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def members_of(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
        return t.getmembers()


def end_of_members(tar: bytes) -> int:
    """Offset of the end-of-archive marker: just past the last member's padded data."""
    last = members_of(tar)[-1]
    return last.offset_data + -(-last.size // 512) * 512


def chunked(data: bytes, how: int | str, seed: int = 0) -> list[bytes]:
    """`data` cut into pieces of `how` bytes, or of random sizes for "random"."""
    if how == "random":
        rnd, pieces, pos = random.Random(seed), [], 0
        while pos < len(data):
            size = rnd.choice([1, 2, 7, 100, 511, 513, 1000, 4093, 65537])
            pieces.append(data[pos:pos + size])
            pos += size
        return pieces
    return [data[i:i + how] for i in range(0, len(data), how)]


def crafted(outside: str = "/tmp/vbtest-outside",
            filler: bytes = b"") -> dict[str, tuple[bytes, str]]:
    """Archives no real volume can produce, each with a member that would land outside the
    directory it is extracted into: name -> (tar bytes, the member the error must name).
    `outside` is an absolute directory the test watches: nothing may appear in it.
    `filler`, if given, is the content of a first file `./filler` (to put the bad member
    past the first chunks of a stream)."""
    root = (_info("./", tarfile.DIRTYPE, 0o755), b"")
    first = [(_info("./filler"), filler)] if filler else []
    hello = (_info("./hello.txt"), b"hello\n")
    link = (_info("./link", tarfile.SYMTYPE, 0o777, linkname=outside), b"")
    pax_path = _info("./benign", pax={"path": "./../pax-escaped"})
    sparse = _info("./GNUSparseFile.1/x", pax={  # GNU's sparse format 1.0: map, then data
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "1",
        "GNU.sparse.name": "./../sparse-escaped"})
    cases = {
        "dotdot": ([hello, (_info("./../escaped"), b"x")], "./../escaped"),
        "dotdot-inside": ([(_info("./a/../../escaped"), b"x")], "./a/../../escaped"),
        "absolute": ([hello, (_info(outside + "/absolute"), b"x")], outside + "/absolute"),
        "pax-path": ([(pax_path, b"x")], "./../pax-escaped"),
        "sparse-name": ([(sparse, b"1\n0\n1\n".ljust(512, b"\0") + b"x")],
                        "./../sparse-escaped"),
        "under-symlink": ([link, (_info("./link/pwned"), b"x")], "./link/pwned"),
        "deep-under-symlink": ([link, (_info("./link/sub/", tarfile.DIRTYPE, 0o755), b""),
                                (_info("./link/sub/pwned"), b"x")], "./link/sub"),
        "dir-after-symlink": ([link, (_info("./link/", tarfile.DIRTYPE, 0o755), b""),
                               (_info("./link/pwned"), b"x")], "./link"),  # a repeated name
        # one name twice: the direct path kept the symlink, the engine the file (issue 23)
        "repeated-name": ([link, (_info("./link"), b"x")], "./link"),
        "repeated-dir": ([(_info("./d/", tarfile.DIRTYPE, 0o755), b""), hello,
                          (_info("d", tarfile.DIRTYPE, 0o700), b"")], "d"),
        "repeated-root": ([hello, (_info(".", tarfile.DIRTYPE, 0o700), b"")], "."),
        "hardlink-absolute": ([(_info("./h", tarfile.LNKTYPE, linkname="/etc/passwd"), b"")],
                              "./h"),
        "hardlink-dotdot": ([(_info("./h", tarfile.LNKTYPE, linkname="./../x"), b"")], "./h"),
        "hardlink-under-symlink": ([link, (_info("./h", tarfile.LNKTYPE,
                                                 linkname="./link/passwd"), b"")], "./h"),
        "hardlink-to-symlink": ([link, (_info("./alias", tarfile.LNKTYPE, linkname="./link"),
                                        b""), (_info("./alias/pwned"), b"x")], "./alias/pwned"),
    }
    return {name: (make_tar([root, *first, *members]), member)
            for name, (members, member) in cases.items()}


def gnu_long_crafted() -> bytes:
    """A `..` hidden in a GNU long name (over 100 bytes, so in a `L` header)."""
    name = "./" + "d" * 100 + "/../../escaped"
    return make_tar([(_info("./", tarfile.DIRTYPE, 0o755), b""), (_info(name), b"x")],
                    tarfile.GNU_FORMAT)
