"""A real S3-compatible server for tests: moto's server mode, in a subprocess.

:func:`s3_server` starts ``python -m moto.server`` on a free port, waits
until it answers, and yields an :class:`ObjectStore`: its endpoint and the
environment (fake credentials, region, endpoint) a child process or pyarrow
needs to reach it. Buckets are made per test with :meth:`ObjectStore.bucket`,
so tests sharing one server never see each other's objects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port

REGION = "us-east-1"
# moto accepts any credentials; these only have to be present.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rampart-test", "AWS_SECRET_ACCESS_KEY": "rampart-test"}
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    def bucket(self, prefix: str = "rampart") -> str:
        """A new, empty bucket's name."""
        import pyarrow.fs as pafs

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        with applied(self.env):
            pafs.S3FileSystem(endpoint_override=self.endpoint.split("://", 1)[1],
                              scheme="http", region=REGION,
                              allow_bucket_creation=True).create_dir(name)
        return name


@contextmanager
def applied(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process for the block, the old values back after it."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@contextmanager
def s3_server(log_dir: Path) -> Iterator[ObjectStore]:
    """moto's S3 server on 127.0.0.1, stopped when the block ends; its output
    goes to ``log_dir/moto.log``."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "moto.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers(f"{endpoint}/moto-api/"):
                if process.poll() is not None:
                    raise RuntimeError(f"moto server exited with {process.returncode}; "
                                       f"see {log_dir / 'moto.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {endpoint}")
                time.sleep(0.1)
            yield ObjectStore(endpoint, {
                **CREDENTIALS, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint,
                # No credentials or region from the developer's own AWS files.
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
            })
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
