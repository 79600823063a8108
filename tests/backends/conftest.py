"""Backend tests: the contract every backend passes, and each backend's own details.

Nothing here needs a Docker engine: S3 runs on moto's server on 127.0.0.1, so these tests
run (never skip) on any machine with the test extras installed. The contract suite also runs
against a real S3-compatible store, Ceph's RGW (tests/rgw_s3.py): skipped where there is
none, unless VOLBACKUP_REQUIRE_ENGINE=1 or CI is set; so do SFTP against a real OpenSSH sshd
that the session starts (tests/sftp_server.py), where sshd is installed, WebDAV (Apache httpd),
Azure (Azurite) and Swift (RGW's Swift API), see tests/opendal_servers.py.
"""

from __future__ import annotations

from tests.moto_s3 import s3_bucket, s3_client, s3_endpoint  # noqa: F401 - fixtures
from tests.opendal_servers import (  # noqa: F401 - fixtures
    azure_container,
    azure_env,
    azure_repo,
    azurite,
    swift_container,
    swift_env,
    swift_repo,
    webdav_env,
    webdav_repo,
    webdav_server,
)
from tests.rgw_s3 import (  # noqa: F401 - fixtures
    any_s3_bucket,
    any_s3_client,
    rgw_bucket,
    rgw_client,
    rgw_endpoint,
    rgw_env,
)
from tests.sftp_server import sftp_env, sftp_repo, sftp_server  # noqa: F401 - fixtures
