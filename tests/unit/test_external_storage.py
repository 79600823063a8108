"""Which recorded (driver, options) restore and migrate create without being told to."""

from __future__ import annotations

import pytest

from volbackup.errors import UntrustedStorage
from volbackup.ops.fill import VolumeSpec, check_storage, external_storage, redact_options

INSIDE = [
    ("local", {}),
    ("local", {"size": "10G"}),                                   # a quota on the area
    ("local", {"type": "tmpfs", "device": "tmpfs", "o": "size=64m,uid=999"}),
    ("local", {"type": "tmpfs", "device": "tmpfs"}),
    ("local", {"type": "TMPFS", "o": "size=1m"}),
]

OUTSIDE = [
    ("local", {"type": "none", "o": "bind", "device": "/usr/local/sbin"}, "bind mount"),
    ("local", {"type": "none", "o": "rbind,ro", "device": "/etc"}, "bind mount"),
    ("local", {"type": "tmpfs", "o": "bind", "device": "/root"}, "bind mount"),   # MS_BIND wins
    ("local", {"type": "tmpfs", "device": "/var/lib/x"}, "device /var/lib/x"),
    ("local", {"type": "ext4", "device": "/dev/sdb1"}, "device /dev/sdb1"),
    ("local", {"type": "nfs", "o": "addr=10.0.0.1,rw", "device": ":/export"}, "network"),
    ("local", {"type": "nfs4", "device": "srv:/export"}, "network"),
    ("local", {"type": "cifs", "o": "username=u,password=p", "device": "//srv/share"}, "network"),
    ("local", {"type": "", "o": "addr=10.0.0.1"}, "network"),
    ("local", {"type": "tmpfs", "device": "srv:/x"}, "network"),
    ("local", {"mountpoint": "/x"}, "unknown local driver option"),
    ("rexray/ebs", {}, "volume plugin"),
    ("nfs-plugin", {"share": "srv:/export"}, "volume plugin"),
]


@pytest.mark.parametrize("driver,options", INSIDE)
def test_data_inside_the_engine_is_not_external(driver, options):
    assert external_storage(driver, options) is None


@pytest.mark.parametrize("driver,options,says", OUTSIDE)
def test_host_paths_devices_network_and_plugins_are_external(driver, options, says):
    assert says in external_storage(driver, options)


def test_secrets_are_redacted_in_options_and_messages():
    options = {"type": "cifs", "device": "//srv/share",
               "o": "username=bob,password=hunter2,credentials=/root/.smb,pass=x,domain=D"}
    shown = redact_options({**options, "password": "plugin-secret"})
    assert shown["o"] == "username=bob,password=***,credentials=***,pass=***,domain=D"
    assert shown["password"] == "***"
    with pytest.raises(UntrustedStorage) as refused:
        check_storage("t", VolumeSpec("local", options, {}), False, lambda m: None)
    message = str(refused.value)
    assert "hunter2" not in message and "/root/.smb" not in message
    assert "--trust-driver-options" in message and "password=***" in message
    said = []
    assert check_storage("t", VolumeSpec("local", options, {}), True, said.append)
    assert len(said) == 1 and "//srv/share" in said[0] and "hunter2" not in said[0]


def test_a_plain_spec_is_neither_refused_nor_announced():
    said = []
    assert check_storage("t", VolumeSpec("local", {}, {}), False, said.append) is None
    assert said == []
