"""Backend tests: the contract every backend passes, and each backend's own details.

Nothing here needs a Docker engine: S3 runs on moto's server on 127.0.0.1, so these tests
run (never skip) on any machine with the test extras installed.
"""

from __future__ import annotations

from tests.moto_s3 import s3_bucket, s3_client, s3_endpoint  # noqa: F401 - fixtures
