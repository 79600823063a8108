"""The fidelity corpus, and a snapshot of a directory tree to compare two trees with.

The corpus is written straight into a volume's mountpoint on the host (tests run as
root beside the engine), and trees are compared with os.lstat on the host: an
independent check that does not go through the engine's archive endpoints.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import zlib

BIG_FILE_BYTES = 50 * 1024 * 1024
SMALL_FILES = 3000
FIXED_MTIME = 1_600_000_000


def write_corpus(root: str) -> None:
    """Fill `root` (an empty volume's mountpoint) with every kind of entry we promise to keep."""
    rnd = random.Random(1234)
    r = os.fsencode(root)

    def path(*parts: str | bytes) -> bytes:
        return os.path.join(r, *(os.fsencode(p) for p in parts))

    def write(rel: str | bytes, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0):
        p = path(rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chown(p, uid, gid)
        os.chmod(p, mode)

    os.makedirs(path("dir/sub"))
    write("hello.txt", b"hello, volume\n")
    write("big-ids", b"owned by a big uid\n", uid=3_000_000, gid=3_000_001)
    write("setuid", b"#!/bin/sh\n", mode=0o4755)
    write("setgid", b"#!/bin/sh\n", mode=0o2755, gid=50)
    os.mkdir(path("sticky"))
    os.chmod(path("sticky"), 0o1777)
    os.mkdir(path("setgid-dir"))
    os.chown(path("setgid-dir"), 1000, 2000)
    os.chmod(path("setgid-dir"), 0o2775)
    os.symlink(b"hello.txt", path("link-relative"))
    os.symlink(b"/etc/passwd", path("link-absolute"))
    os.symlink(b"nowhere/none", path("link-dangling"))
    os.lchown(path("link-relative"), 1234, 5678)
    os.symlink(b"../../hello.txt", path("dir/sub/link-up"))    # `..` in a target is normal
    os.symlink(b"/", path("link-root"))
    os.symlink(b"dir", path("link-dir"))                         # a symlink to a directory,
    write("link-dir-not", b"a sibling that only shares its prefix\n")  # and names that look alike
    write("..dots", b"a name that starts with two dots\n")
    write("dir/hardlink-a", b"one inode, two names\n", mode=0o600)
    os.link(path("dir/hardlink-a"), path("dir/sub/hardlink-b"))
    os.link(path("dir/hardlink-a"), path("hardlink-c"))
    # Hard links keep setuid/setgid on both paths (the engine's extractor needs help: its
    # chown of each link clears them), and their directories keep their mtimes.
    write("dir/suid-linked", b"#!/bin/sh\n", mode=0o4755)
    os.link(path("dir/suid-linked"), path("dir/sub/suid-linked-2"))
    write("sgid-linked", b"#!/bin/sh\n", mode=0o2750, gid=50)
    os.link(path("sgid-linked"), path("dir/sub/sgid-linked-2"))
    os.makedirs(path("empty"))
    os.makedirs(path("deep/empty/nested"))
    os.mkfifo(path("fifo"), 0o640)
    os.mknod(path("null-device"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    write("caf\u00e9-\u65e5\u672c.txt", "UTF-8 name\n".encode())
    write(b"latin1-\xe9\xff.bin", b"non-UTF-8 name\n")
    write("new\nline", b"newline in the name\n")
    long_dir = "/".join(["d" * 60] * 4)
    os.makedirs(path(long_dir))
    long_file = long_dir + "/" + "f" * 200
    write(long_file, b"a path over 250 bytes\n")
    assert len(os.fsencode(long_file)) > 250
    write("big.bin", _big_content(rnd))
    os.makedirs(path("many"))
    for i in range(SMALL_FILES):
        size = rnd.randrange(0, 2048)
        body = (f"{i}:".encode() * (size // 4 + 1))[:size] if i % 2 else rnd.randbytes(size)
        write(f"many/{i:05d}.dat", body, mode=0o640 if i % 3 else 0o600, uid=i % 5)
    # Mtimes last (creating entries changes their directories' mtimes), deepest first.
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            t = FIXED_MTIME + zlib.crc32(name) % 100_000
            os.utime(p, (t, t), follow_symlinks=False)
    os.chown(r, 1001, 1002)
    os.chmod(r, 0o750)
    os.utime(r, (FIXED_MTIME - 7, FIXED_MTIME - 7))


def _big_content(rnd: random.Random) -> bytes:
    """Half random (incompressible), half repetitive, so both zstd paths are exercised."""
    half = BIG_FILE_BYTES // 2
    return rnd.randbytes(half) + (b"compressible " * (half // 13 + 1))[:half]


def tree(root: str) -> dict[bytes, tuple]:
    """Every entry under `root` (the root itself as b'.'): type, mode, owner, size,
    content hash or link target, mtime in seconds, and the other names of its inode."""
    r = os.fsencode(root)
    entries: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, r)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
            entries[rel] = _describe(full, st)
    st = os.lstat(r)
    entries[b"."] = _describe(r, st)
    links = {rel: tuple(sorted(group)) for group in inodes.values() if len(group) > 1
             for rel in group}
    return {rel: desc + (links.get(rel, ()),) for rel, desc in entries.items()}


def _describe(path: bytes, st: os.stat_result) -> tuple:
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        content = digest.hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        content = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        content = None
    size = st.st_size if stat.S_ISREG(st.st_mode) else None
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, content,
            int(st.st_mtime))


def differences(expected: dict, actual: dict, limit: int = 20) -> list[str]:
    """Human-readable differences between two trees, at most `limit` of them."""
    out = []
    for rel in sorted(set(expected) | set(actual)):
        if expected.get(rel) != actual.get(rel):
            out.append(f"{rel!r}: expected {expected.get(rel)} got {actual.get(rel)}")
            if len(out) >= limit:
                break
    return out
