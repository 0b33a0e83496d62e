"""Debian's `redis-server` for the tests, on a free loopback port: started, killed with `kill -9` and started
again on the same port (what the facade sees when its Redis crashes and comes back), and a listener that
takes the port and never answers (a Redis that hangs).

Nothing is persisted (`--save ""`, no append-only file): every start is an empty Redis, as after a crash.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests import support

REDIS_SERVER = "/usr/bin/redis-server"  # Debian's package, installed by scripts/install-system-packages.sh


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or support.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it (again, after a kill: same port) and wait until it answers PING."""
        argv = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1"]
        # DEBUG SLEEP makes it slow on demand; only for clients on this machine (Redis 7 refuses DEBUG by default).
        argv += ["--dir", str(self.directory), "--enable-debug-command", "local"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
            if self.answers_ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s:\n{self.log()}")

    def answers_ping(self, timeout: float = 0.5) -> bool:
        with contextlib.suppress(redis.RedisError, OSError), self.client(timeout) as client:
            return bool(client.ping())
        return False

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A client of its own (close it: `with server.client() as client:`) that never retries: a timeout is
        reported after `timeout`, not after redis-py's default three more tries."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def kill(self) -> None:
        """`kill -9`: no shutdown, no goodbye to its clients, its data gone."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signum)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    @contextlib.contextmanager
    def running(self) -> Iterator[RedisServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class HungRedis:
    """Takes a port and accepts every connection but never answers a byte, as a Redis stuck in a long
    command or behind a dead network path does. Counts the connections, i.e. how often a client tried."""

    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: right after a kill
        self._server.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = self._server.accept()
                self._held.append(connection)  # held open, never read from: the command sent waits forever

    @contextlib.contextmanager
    def running(self) -> Iterator[HungRedis]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            self._thread.join(5)
            for connection in self._held:
                connection.close()
            self._server.close()
