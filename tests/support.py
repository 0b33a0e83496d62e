"""Real processes on real sockets for the test suite: free ports, servers started and stopped cleanly.

Every tier uses these: the bundled demo upstream, llama.cpp, nginx and the facade itself all run as
separate processes, so what the tests see is what a client on the network sees.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

PYTHON = sys.executable
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A child process that serves HTTP on 127.0.0.1:port; its output goes to a log file for post-mortems."""

    def __init__(self, argv: Sequence[str], port: int, log_path: Path, env: Mapping[str, str] | None = None):
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str = "/health", timeout: float = 60.0) -> ServerProcess:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[:4]} exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + ready_path, timeout=1.0).status_code < 500:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[:4]} did not answer {ready_path} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.process.wait(timeout)


@contextlib.contextmanager
def running(server: ServerProcess, ready_path: str = "/health", timeout: float = 60.0) -> Iterator[ServerProcess]:
    server.start(ready_path, timeout)
    try:
        yield server
    finally:
        server.stop()


def demo_upstream(tmp_path: Path, *switches: str) -> ServerProcess:
    """The bundled OpenAI-compatible upstream (`capibara-facade demo-upstream`), fault switches as CLI flags."""
    port = free_port()
    argv = [PYTHON, "-m", "capibara_facade", "demo-upstream", "--host", "127.0.0.1", "--port", str(port), *switches]
    return ServerProcess(argv, port, tmp_path / f"upstream-{port}.log")


def facade(tmp_path: Path, config_toml: str, *args: str, env: Mapping[str, str] | None = None) -> ServerProcess:
    """The facade under real uvicorn (`python -m capibara_facade serve`) with the given TOML config."""
    port = free_port()
    config_path = tmp_path / f"facade-{port}.toml"
    config_path.write_text(config_toml)
    argv = [
        PYTHON, "-m", "capibara_facade", "serve",
        "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port), *args,
    ]  # fmt: skip
    return ServerProcess(argv, port, tmp_path / f"facade-{port}.log", env)


def upstream_config(url: str, name: str = "default", **keys: str | int | float) -> str:
    """A TOML `[upstreams.NAME]` table pointing at `url`."""
    lines = [f"[upstreams.{name}]", f'url = "{url}"']
    lines += [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines).replace("'", '"') + "\n"


def wait_for(check: Callable[[], T | None], within: float = 10.0) -> T:
    """Poll `check` until it returns something other than None (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still nothing after {within}s")
        time.sleep(0.05)
