"""Where the facade spends its CPU under load: py-spy against the facade while wrk (or the SSE client) drives it.

    .venv/bin/pip install py-spy          # a profiling tool only; not a project dependency
    python -m bench.profile               # non-streaming, wrk c=32, 15 s
    python -m bench.profile --stream      # streaming, SSE client c=32, 20 chunks 5 ms apart
    python -m bench.profile --concurrency 1 --seconds 10
    python -m bench.profile --slow 1000       # 1,000 concurrent streams, chunks 50 ms apart
    python -m bench.profile --analyse bench/results/<ts>-profile-json-c32.folded   # re-read a recording

Same layout as `python -m bench`: facade alone on the proxy core; stub, load and py-spy on the load core.
Prints the top functions by own ("self") samples, by inclusive samples, and the share of samples per package,
and writes the folded stacks and the report to bench/results/<timestamp>-profile-<mode>.{folded,txt}.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.facade_config import shipped_toml
from bench.load import run_sse, run_wrk, stream_body
from bench.procs import (
    REPO,
    Cores,
    cpu_seconds,
    make_workdir,
    raise_fd_limit,
    start_facade,
    start_stub,
)

RESULTS = Path(__file__).resolve().parent / "results"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

PACKAGES = (
    ("capibara_facade", "capibara_facade"),
    ("litestar", "litestar"),
    ("uvicorn", "uvicorn"),
    ("httpx_aiohttp", "httpx-aiohttp"),
    ("httpx", "httpx"),
    ("httpcore", "httpcore"),
    ("aiohttp", "aiohttp"),
    ("msgspec", "msgspec"),
    ("anyio", "anyio"),
    ("uvloop", "uvloop"),
    ("h11", "h11"),
    ("httptools", "httptools"),
    ("multidict", "multidict"),
    ("yarl", "yarl"),
    ("/asyncio/", "asyncio (stdlib)"),
    ("logging", "logging (stdlib)"),
)


def package_of(path: str) -> str:
    for needle, name in PACKAGES:
        if needle in path:
            return name
    if "/lib/python3" in path and "site-packages" not in path:
        return "stdlib (other)"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    return path or "?"


def short(frame: str, with_line: bool = True) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3.11/", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = ":" + match["line"] if with_line and match["line"] else ""
    return f"{match['func']} ({path}{line})"


def analyse(folded: str, top: int = 25) -> tuple[str, dict[str, Any]]:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    pkg_self: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[short(leaf)] += count
        match = _FRAME.match(leaf)
        pkg_self[package_of(match["file"] if match else leaf)] += count
        for name in {short(frame, with_line=False) for frame in frames}:
            incl_counts[name] += count
    # py-spy leaves out samples where the thread sleeps in epoll (no --idle); a leaf that is the event loop's
    # own entry point (uvloop's run_forever) is time in C code under it: syscalls, transports, parsing.
    lines = [f"samples: {total} (a leaf in asyncio/uvloop run* = CPU in C code below Python: I/O, parsing)"]
    lines.append("\nshare of samples by package (own time of the innermost Python frame):")
    for name, count in pkg_self.most_common():
        lines.append(f"  {100 * count / max(1, total):5.1f}%  {name}")
    lines.append(f"\ntop {top} lines by own time:")
    for name, count in self_counts.most_common(top):
        lines.append(f"  {100 * count / max(1, total):5.1f}%  {name}")
    lines.append(f"\ntop {top + 20} functions by inclusive time (time in them and everything they call):")
    for name, count in incl_counts.most_common(top + 20):
        lines.append(f"  {100 * count / max(1, total):5.1f}%  {name}")
    summary = {
        "samples": total,
        "by_package": dict(pkg_self.most_common()),
        "self": dict(self_counts.most_common(top)),
        "inclusive": dict(incl_counts.most_common(top + 20)),
    }
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="profile streaming (20 chunks, 5 ms apart)")
    parser.add_argument(
        "--slow", type=int, metavar="N", help="profile N concurrent slow streams (chunks 50 ms apart) instead"
    )
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--nonblocking", action="store_true", help="don't pause the facade per sample (cheaper, torn stacks)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--analyse", type=Path, metavar="FOLDED", help="only print the report of a .folded file")
    args = parser.parse_args(argv)
    if args.analyse:
        print(analyse(args.analyse.read_text())[0])
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2

    raise_fd_limit()
    if os.geteuid() == 0:
        os.nice(-10)  # as in `python -m bench`: other work on a shared machine disturbs less
    cores = Cores.pick()
    cores.pin_self_to_load_core()
    workdir = make_workdir()
    stub = start_stub(workdir, cores)
    facade = start_facade(workdir, cores, shipped_toml(stub.base_url))
    kind = "stream" if args.stream else "json"
    mode = f"slow-{args.slow}" if args.slow else f"{kind}-c{args.concurrency}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    folded_path = args.out / f"{stamp}-profile-{mode}.folded"
    try:
        run_wrk(cores, facade.base_url, 32, 2)  # warm-up
        load_seconds = args.seconds + 3
        result: dict[str, Any] = {}

        def load() -> None:
            if args.slow:
                spec = {
                    "mode": "slow",
                    "streams": args.slow,
                    "ramp_s": 1.0,
                    "timeout_s": 120,
                    "body": stream_body(int(load_seconds * 20), 50.0),
                }
                result.update(run_sse(cores, facade.port, spec, load_seconds + 120))
            elif args.stream:
                spec = {
                    "mode": "sequential",
                    "concurrency": args.concurrency,
                    "streams": 10**7,
                    "duration_s": load_seconds,
                    "timeout_s": 30,
                    "body": stream_body(20, 5.0),
                }
                result.update(run_sse(cores, facade.port, spec, load_seconds + 60))
            else:
                result.update(run_wrk(cores, facade.base_url, args.concurrency, load_seconds))

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.5)
        cpu0 = cpu_seconds(facade.process.pid)
        spy_cmd = [
            *cores.prefix(cores.load),
            spy,
            "record",
            "--pid",
            str(facade.process.pid),
            "--duration",
            str(args.seconds),
            "--rate",
            str(args.rate),
            "--format",
            "raw",
            *(["--nonblocking"] if args.nonblocking else []),
            "--output",
            str(folded_path),
        ]
        spy_run = subprocess.run(spy_cmd, capture_output=True, timeout=args.seconds + 60)
        cpu1 = cpu_seconds(facade.process.pid)
        thread.join()
    finally:
        facade.stop()
        stub.stop()
    if spy_run.returncode != 0 or not folded_path.exists():
        print(f"py-spy failed: {spy_run.stderr.decode(errors='replace')}", file=sys.stderr)
        return 1
    report, _ = analyse(folded_path.read_text())
    rate = result.get("req_per_s") or result.get("streams_per_s") or 0
    if args.slow:
        rate = result.get("event_delay_us", {}).get("n", 0) / max(1e-9, result.get("elapsed_s", 1.0))
    how = f"{args.seconds} s at {args.rate} Hz" + (", nonblocking" if args.nonblocking else "")
    head = (
        f"py-spy profile of the facade ({mode}, {how}); "
        f"load: {rate:,.0f}/s; facade CPU busy {100 * (cpu1 - cpu0) / args.seconds:.0f}% of its core"
    )
    text = head + "\n" + report + "\n"
    print(text)
    (args.out / f"{stamp}-profile-{mode}.txt").write_text(text)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
