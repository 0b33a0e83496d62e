"""The machine the benchmark runs on: what it is (for the JSON), how busy it is, and the runner's own set-up."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from typing import Any

from bench.log import log
from bench.procs import REPO, Cores, LoadMeter, raise_fd_limit


def prepare(nice: int) -> tuple[Cores, int]:
    """Open-file limit up, renice (root only), the runner onto the load core. Returns (cores, niceness)."""
    raise_fd_limit()
    niceness = 0
    if nice and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            niceness = os.nice(nice)
    cores = Cores.pick()
    cores.pin_self_to_load_core()
    return cores, niceness


def wait_quiet(limit_s: float, window_s: float = 2.0, quiet: float = 0.3) -> float:
    """Cores other processes keep busy (over `window_s`), after waiting up to `limit_s` for it to drop < quiet."""
    deadline = time.monotonic() + limit_s
    while True:
        meter = LoadMeter([])
        time.sleep(window_s)
        busy = meter.stop()["foreign_cores"]
        if busy < quiet or time.monotonic() >= deadline:
            return busy
        log(f"waiting for a quieter machine: other processes use {busy:.2f} cores")


def _version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()
    return text[0] if text else "?"


def machine_info(cores: Cores) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in ("litestar", "httpx", "aiohttp", "httpx-aiohttp", "msgspec", "uvicorn", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "wrk": _version(["wrk", "--version"]),
        "nginx": _version(["nginx", "-v"]) if shutil.which("nginx") else "not installed",
        "commit": commit if len(commit) < 20 else "?",
        "loadavg_start": os.getloadavg(),
        "pinning": {"load_core": cores.load, "proxy_core": cores.proxy},
    }
