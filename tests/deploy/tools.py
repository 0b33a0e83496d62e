"""What the deployment tests share: the shipped files' paths, SSE arrival times, who owns a socket, readers for
the systemd unit and the Dockerfile, and Debian's redis-server started with a shipped file's arguments.

Nothing here fakes a deployment: the tests start the real programs (nginx, the facade as its systemd unit
would, the demo upstream) and these helpers only read what the operating system reports about them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import redis

from tests.redis_server import REDIS_SERVER
from tests.support import ROOT, free_port

DEPLOY = ROOT / "deploy"
FACADE_TOML = DEPLOY / "capibara-facade.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_VENV_BIN = "/opt/capibara-facade/.venv/bin/"


# --- Server-Sent Events, with the moment each one arrived -------------------------------------------------


class Arrivals:
    """SSE events in order, each with the monotonic time of the read that completed it."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.times: list[float] = []
        self._buffer = b""

    def feed(self, chunk: bytes, now: float) -> None:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            self.events.append(event)
            self.times.append(now)

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == b"data: [DONE]"

    def assert_incremental(self, chunk_delay: float) -> None:
        """The upstream sleeps `chunk_delay` before every event after its first. Unbuffered, the events
        reach the client spread over (at least roughly) that much time, in many separate reads; buffered
        anywhere on the way, they arrive together in one or two reads at the end."""
        assert self.done, f"the stream did not end with data: [DONE]: {self.events[-3:]}"
        gaps = len(self.events) - 1
        assert gaps >= 8, f"too few events to judge: {self.events}"
        spread = self.times[-1] - self.times[0]
        assert spread >= 0.5 * gaps * chunk_delay, (
            f"{len(self.events)} events arrived within {spread:.3f}s; the upstream spaced them by {chunk_delay}s"
        )
        reads = len(set(self.times))
        assert reads >= len(self.events) // 2, f"{len(self.events)} events arrived in only {reads} reads"


def read_stream(response: httpx.Response) -> Arrivals:
    arrivals = Arrivals()
    for chunk in response.iter_raw():
        arrivals.feed(chunk, time.monotonic())
    return arrivals


# --- processes and their sockets, from /proc ---------------------------------------------------------------


def process_group(pgid: int) -> set[int]:
    """PIDs of the processes in a process group (the facade's supervisor and its workers)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may contain spaces, so split after the last ')'.
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.add(int(entry.name))
    return members


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _tcp_inode(server_port: int, client_port: int) -> int:
    """The inode of the server side of 127.0.0.1:client_port → 127.0.0.1:server_port (0 until accepted)."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[9])
    return 0


def accepting_process(server_port: int, client_port: int, candidates: Iterable[int], within: float = 5.0) -> int:
    """The PID among `candidates` that accepted our connection from `client_port` (polls until it has)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        inode = _tcp_inode(server_port, client_port)
        if inode:
            for pid in candidates:
                if inode in _socket_inodes(pid):
                    return pid
        time.sleep(0.02)
    raise AssertionError(f"no process among {sorted(candidates)} accepted the connection from port {client_port}")


# --- systemd unit files --------------------------------------------------------------------------------------


def unit_entries(path: Path) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) for each assignment in a systemd unit file, repeated keys included."""
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        yield section, key.strip(), value.strip()


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [value for s, k, value in unit_entries(path) if s == section and k == key]


def environment_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile (NAME=value lines, comments) as a dict."""
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def expand(command: str, environ: dict[str, str]) -> list[str]:
    """systemd's ${NAME} expansion in an Exec line, split on whitespace (the unit uses no quoting)."""
    return re.sub(r"\$\{(\w+)\}", lambda match: environ[match.group(1)], command).split()


# --- the Dockerfile ------------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each line of the Dockerfile, continuation lines joined."""
    parsed: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
        pending = ""
    return parsed


def image_env() -> dict[str, str]:
    """The environment the image's ENV instructions set."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions():
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in arguments.split()))
    return env


def exec_form(arguments: str) -> list[str]:
    """An exec-form CMD (a JSON array) as argv for this checkout: the image's virtualenv is this one."""
    command: list[str] = json.loads(arguments)
    return [part.replace(IMAGE_VENV_BIN, f"{Path(sys.executable).parent}/") for part in command]


# --- Redis ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_started_with(arguments: list[str], directory: Path) -> Iterator[int]:
    """Debian's redis-server with the arguments a shipped file gives it (a container's command or args), moved
    to a free loopback port and to `directory`; its port, once it answers PING."""
    port = free_port()
    argv = [REDIS_SERVER, *arguments, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    log = directory / "redis.log"
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            assert process.poll() is None, f"redis-server refused {arguments}: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "redis-server did not answer PING within 10 s"
            time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _answers_ping(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    with contextlib.suppress(redis.RedisError, OSError), client:
        return bool(client.ping())
    return False
