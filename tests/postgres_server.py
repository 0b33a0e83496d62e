"""Debian's Postgres server for the tests: a cluster of its own in a temporary directory, on a free loopback
port, with a fresh database per test (`database()`).

Postgres refuses to run as root, and CI runs as root: then the cluster belongs to the `postgres` user the
Debian package creates, and its processes run as that user. Nothing listens on a Unix socket; the only
client is the loopback TCP port, trusted without a password (the facade's URL carries none).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from tests import support

BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's `postgresql` package (scripts/system-packages.txt)
SUPERUSER = "facade"


class PostgresServer:
    def __init__(self) -> None:
        self.port = support.free_port()
        # Not under pytest's tmp_path: its directories are root's alone, and the server may not be root.
        self.directory = Path(tempfile.mkdtemp(prefix="capibara-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            account = pwd.getpwnam(self._user)
            os.chown(self.directory, account.pw_uid, account.pw_gid)

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=120, user=self._user, cwd=self.directory)

    def start(self) -> PostgresServer:
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """The URL of a new, empty database."""
        name = "test_" + uuid.uuid4().hex[:12]

        async def create() -> None:
            connection = await asyncpg.connect(self.url(), timeout=10)
            try:
                await connection.execute(f"CREATE DATABASE {name}")
            finally:
                await connection.close()

        asyncio.run(create())
        return self.url(name)

    @contextlib.contextmanager
    def running(self) -> Iterator[PostgresServer]:
        try:
            yield self.start()
        finally:
            self.stop()
