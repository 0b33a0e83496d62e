"""Load generators: wrk (JSON POSTs, Lua script `post.lua`) and the SSE client (`sse_client.py`), both run as
separate processes pinned to the load core, plus the stub's request counters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.procs import REPO, Cores

LUA = Path(__file__).resolve().parent / "post.lua"
MODEL = "aya_expanse_multilingual"
CHAT_BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Hola, que tal? Answer in one sentence."},
    ],
    "max_tokens": 64,
    "temperature": 0.7,
}


def stream_body(chunks: int, delay_ms: float) -> dict[str, Any]:
    """A streaming request; the `bench_*` vendor fields steer the stub and pass through the proxy unchanged."""
    return {**CHAT_BODY, "stream": True, "bench_chunks": chunks, "bench_chunk_delay_ms": delay_ms}


def stub_stats(base_url: str, path: str = "/stats") -> dict[str, int]:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        response = client.get(base_url + path)
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats


def run_wrk(
    cores: Cores,
    base_url: str,
    connections: int,
    seconds: int,
    timeout_s: int = 10,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run (one thread: the load core is a single core). Returns post.lua's BENCH_JSON summary."""
    cmd = [
        *cores.prefix(cores.load),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, seconds)}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        base_url,
    ]
    env = {
        **os.environ,
        "BENCH_BODY": json.dumps(CHAT_BODY, separators=(",", ":")),
        "BENCH_PATH": "/v1/chat/completions",
        "BENCH_HEADERS": "\n".join(f"{name}: {value}" for name, value in (headers or {}).items()),
    }
    result = subprocess.run(cmd, capture_output=True, env=env, timeout=seconds + timeout_s + 30)
    out = result.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            data["errors_total"] = sum(data["errors"].values())
            data["req_per_s"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
            return data
    raise RuntimeError(f"wrk gave no summary (exit {result.returncode}):\n{out}\n{result.stderr.decode()}")


def run_sse(
    cores: Cores, port: int, spec: dict[str, Any], timeout_s: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One SSE client run in its own process on the load core."""
    full = {"host": "127.0.0.1", "port": port, "headers": headers or {}, **spec}
    cmd = [*cores.prefix(cores.load), sys.executable, "-m", "bench.sse_client", json.dumps(full)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout_s, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"sse client failed (exit {result.returncode}):\n{result.stderr.decode()}")
    data: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return data
