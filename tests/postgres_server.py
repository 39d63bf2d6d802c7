"""A real PostgreSQL server for tests: Debian's binaries (``make system-deps``
installs them), a throwaway data directory, 127.0.0.1 on a free port.

initdb and the server refuse to run as root, and tests here run as root: then
every server command runs as the ``postgres`` system user, which owns the
temporary directory. Run as anyone else, they run as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from tests.ports import free_port

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        major = Path(initdb).parents[1].name
        found.append((int(major) if major.isdigit() else 0, Path(initdb).parent))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """``initdb`` on construction, then :meth:`start` / :meth:`stop` as often as
    a test likes (same data, same port); :meth:`destroy` removes it all."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError("no PostgreSQL found (initdb); `make system-deps` installs it")
        self.bindir = found
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="rampart-pg-", dir=self._parent_dir()))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.sockets.mkdir()
        if self.as_postgres:
            for path in (self.root, self.sockets):
                shutil.chown(path, user="postgres", group="postgres")
        self.port = free_port()
        self.running = False
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--no-sync")

    def _parent_dir(self) -> str:
        """The temp directory, if the postgres user can reach into it; else /tmp."""
        parent = Path(tempfile.gettempdir()).resolve()
        if not self.as_postgres:
            return str(parent)
        reachable = all(p.stat().st_mode & stat.S_IXOTH for p in (parent, *parent.parents))
        return str(parent) if reachable else "/tmp"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): "
                               f"{done.stderr.strip()}\n{tail}")

    def start(self) -> None:
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.sockets} "
                   # A test database: durability buys nothing and costs time.
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.root / "server.log"), "-o", options)
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as on a server restart."""
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
            self.running = False

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = SUPERUSER) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "rampart") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def wait_until_accepting(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
