"""Processes under test: start, pin, wait for, measure (/proc CPU time and RSS) and stop them.

Core layout (2 cores): the proxy under test (facade or nginx) runs alone on the *proxy core*; the stub
upstream, the load generators (wrk, the SSE client) and this runner share the *load core*. The proxy is what
we measure, so it gets a core nobody else touches; its CPU time per request comes from /proc and does not
depend on how busy the other core is. Where only one core is available, nothing is pinned (and the JSON says so).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cores:
    load: int | None
    proxy: int | None

    @classmethod
    def pick(cls) -> Cores:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(load=allowed[0], proxy=allowed[-1])

    def prefix(self, core: int | None) -> list[str]:
        return ["taskset", "-c", str(core)] if core is not None else []

    def pin_self_to_load_core(self) -> None:
        if self.load is not None:
            os.sched_setaffinity(0, {self.load})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


# ----------------------------------------------------------------------------------------------- /proc readings


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    out = [pid]
    index = 0
    while index < len(out):
        current = out[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as handle:
                    out.extend(int(child) for child in handle.read().split())
    return out


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of pid and its live descendants, in seconds (10 ms resolution at CLK_TCK=100).

    stime is time in the kernel on the process's behalf: syscalls, and on loopback also the receiving side's
    TCP processing that a send() runs inline."""
    user = system = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # field 14 of proc(5): utime
            system += int(fields[12])  # field 15: stime
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its live descendants, in seconds."""
    return sum(cpu_times(pid))


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS summed over the tree, largest VmHWM — peak RSS — of one process in the tree), in KiB."""
    total = 0
    hwm = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
    return total, hwm


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of all cores since boot, steal seconds) from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


class LoadMeter:
    """How much CPU *other* processes took during a measurement: a shared machine's noise, reported per phase.

    foreign = all busy CPU time on the machine - (this runner and its waited children: wrk, the SSE client)
              - (the stub and each proxy process tree).
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = self._snapshot()
        self.wall = time.monotonic()

    def _snapshot(self) -> tuple[float, float, float]:
        busy, steal = machine_busy_seconds()
        mine = os.times()
        ours = mine.user + mine.system + mine.children_user + mine.children_system
        ours += sum(cpu_seconds(pid) for pid in self.pids)
        return busy, steal, ours

    def stop(self) -> dict[str, float]:
        busy, steal, ours = self._snapshot()
        wall = max(1e-6, time.monotonic() - self.wall)
        return {
            "foreign_cores": max(0.0, (busy - self.start[0]) - (ours - self.start[2])) / wall,
            "steal_cores": (steal - self.start[1]) / wall,
        }


class RssSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid)[0])

    def __enter__(self) -> RssSampler:
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid)[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid)[0])


# ----------------------------------------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    measured_pid: int | None = None  # the tree whose CPU/RSS we read (None: not measured)
    extra: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request of the load to it

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        # The process was started in its own session: signal its group (our own children only).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed by the OS with it
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until `url` answers with any HTTP status (the server is listening and serving)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode} before answering {url}")
            try:
                client.get(url)
                return
            except httpx.HTTPError as exc:
                last = exc
                time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {last!r}")


def start_stub(workdir: Path, cores: Cores) -> Service:
    port = free_port()
    log_path = workdir / "stub.log"
    cmd = [*cores.prefix(cores.load), sys.executable, "-m", "bench.stub_upstream", "--port", str(port)]
    process = _spawn(cmd, log_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    service = Service("stub", port, process, log_path)
    try:
        wait_http(f"{service.base_url}/health", process, 15)
    except RuntimeError as exc:
        raise RuntimeError(f"stub upstream: {exc}\n{service.log_tail()}") from None
    return service


def facade_available() -> tuple[bool, str]:
    """Whether `python -m capibara_facade serve --help` works in this environment (and why not)."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "capibara_facade", "serve", "--help"],
            capture_output=True,
            timeout=60,
            cwd=REPO,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, repr(exc)
    if result.returncode != 0:
        return False, (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-1:][0]
    return True, ""


def start_facade(workdir: Path, cores: Cores, config_toml: str, name: str = "facade") -> Service:
    """The facade, one worker, on the proxy core, with `config_toml` (bench/facade_config.py) as its config."""
    port = free_port()
    config = workdir / f"{name}.toml"
    config.write_text(config_toml)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAPIBARA")}
    cmd = [
        *cores.prefix(cores.proxy),
        sys.executable,
        "-m",
        "capibara_facade",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_path = workdir / f"{name}.log"
    process = _spawn(cmd, log_path, env=env)
    service = Service(name, port, process, log_path, measured_pid=process.pid)
    try:
        wait_http(f"{service.base_url}/health", process, 60)
    except RuntimeError as exc:
        service.stop()
        raise RuntimeError(f"{name}: {exc}\n{service.log_tail()}") from None
    return service


def start_redis(workdir: Path, cores: Cores) -> Service:
    """Debian's redis-server on loopback, a free port, no persistence, on the load core (like the stub: in
    production Redis is on another machine, not on the proxy's core). Its CPU is the run's own, not noise."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `bash scripts/install-system-packages.sh`")
    port = free_port()
    log_path = workdir / "redis.log"
    cmd = [*cores.prefix(cores.load), binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    process = _spawn([*cmd, "--appendonly", "no", "--dir", str(workdir)], log_path)
    service = Service("redis", port, process, log_path, measured_pid=process.pid)
    deadline = time.monotonic() + 15
    while not _redis_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"redis-server did not answer PING on port {port}:\n{service.log_tail()}")
        time.sleep(0.05)
    return service


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


NGINX_CONF = """\
# Generated by `python -m bench`: nginx as a plain reverse proxy, one worker, keep-alive to the upstream.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
user root;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream stub {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, cores: Cores, stub: Service) -> Service | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    port = free_port()
    ngx_dir = workdir / "nginx"
    ngx_dir.mkdir(exist_ok=True)
    conf = ngx_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=ngx_dir, port=port, upstream_port=stub.port))
    cmd = [*cores.prefix(cores.proxy), binary, "-p", str(ngx_dir), "-e", str(ngx_dir / "startup.log"), "-c"]
    process = _spawn([*cmd, str(conf)], workdir / "nginx.log")
    service = Service("nginx", port, process, workdir / "nginx.log", measured_pid=process.pid)
    try:
        wait_http(f"{service.base_url}/health", process, 15)
    except RuntimeError as exc:
        tail = (ngx_dir / "nginx-error.log").read_text(errors="replace") if conf.exists() else ""
        service.stop()
        raise RuntimeError(f"nginx: {exc}\n{service.log_tail()}\n{tail}") from None
    return service


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="capibara-bench-"))
