"""`capibara-facade reload`: tell a running facade to read its config again (SIGHUP).

The facade to signal is found from a pid file (`--pid-file`, which `serve --pid-file` writes), or else from
the port it listens on: the process holding that listening socket whose parent does not hold it too (with
several workers, the supervisor, which passes the signal on to every worker). Linux's /proc is read for that.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["find_listener", "signal_reload"]

_LISTEN = "0A"  # TCP state in /proc/net/tcp


def signal_reload(pid_file: str | None, port: int) -> int:
    """Send SIGHUP; the pid signalled."""
    pid = int(Path(pid_file).read_text().strip()) if pid_file else find_listener(port)
    os.kill(pid, signal.SIGHUP)
    return pid


def find_listener(port: int) -> int:
    """The pid of the process listening on `port` (the supervisor, when workers share the socket)."""
    inodes = {
        fields[9]
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        if os.path.exists(table)
        for fields in (line.split() for line in Path(table).read_text().splitlines()[1:])
        if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port
    }
    if not inodes:
        raise LookupError(f"nothing listens on port {port}")
    sockets = {f"socket:[{inode}]" for inode in inodes}
    holders = {pid for pid in _pids() if _holds(pid, sockets)}
    if not holders:
        raise LookupError(f"the process listening on port {port} is not visible (run as its user, or use --pid-file)")
    return next(pid for pid in sorted(holders) if _parent(pid) not in holders)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _holds(pid: int, sockets: set[str]) -> bool:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
        return any(_link(f"/proc/{pid}/fd/{fd}") in sockets for fd in descriptors)
    except OSError:  # gone, or not ours to look at
        return False


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])
