"""The only package that imports the docker SDK: the engine (volumes, containers, helpers)
and the direct path (host GNU tar on directories proved to be the engine's own).

`client` is imported first, so the SDK is loaded without paramiko (see client.py) before
any module here imports docker. `import docker` in this package means the SDK (absolute
imports), never this package.
"""

from volbackup.docker import client as _client  # noqa: F401  (first: loads the SDK)
