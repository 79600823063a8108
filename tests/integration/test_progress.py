"""A progress bar on a terminal; nothing extra when stderr is not one (cron)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from tests.integration.helpers import fill


def test_progress_bar_only_on_a_terminal(make_volume, mountpoint, repo_dir, cli):
    volume = make_volume("progress")
    fill(mountpoint(volume.name), {"data.bin": os.urandom(8 << 20)})

    primary, secondary = pty.openpty()
    # A fresh pty is 0x0 and tqdm draws nothing at width 0; a real terminal has a size.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.run([sys.executable, "-m", "volbackup", "backup", volume.name,
                               "-r", str(repo_dir)], stdout=subprocess.PIPE,
                              stderr=secondary, timeout=120)
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO once the terminal's other side is closed
                break
            if not data:
                break
            shown += data
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0
    assert volume.name.encode() in shown and b"B/s" in shown, shown[-300:]

    quiet = cli("backup", volume.name, "-r", str(repo_dir))
    assert quiet.code == 0 and quiet.stderr == ""
