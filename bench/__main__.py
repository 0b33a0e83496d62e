"""`python -m bench` (what `make bench` runs): the facade against the direct upstream and nginx, interleaved.

Starts the stub upstream (bench/stub_upstream.py), the facade in its shipped configuration (one worker) and, when
installed, nginx as a plain reverse proxy; pins the proxy under test alone on one core and everything else (stub,
wrk, the SSE client, this runner) on the other; runs every measurement for each target in turn, round after
round (the order rotates each round), so slow drifts on a shared machine hit all targets alike. Prints one table
and writes bench/results/<UTC timestamp>.json (and .md). See bench/README.md for what each row means.

    python -m bench            full run (a few minutes)
    python -m bench --quick    smoke run (well under a minute): same rows, fewer requests; numbers are rough
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.load import CHAT_BODY, run_sse, run_wrk, stream_body, stub_stats
from bench.procs import (
    REPO,
    Cores,
    LoadMeter,
    RssSampler,
    Service,
    cpu_times,
    facade_available,
    make_workdir,
    raise_fd_limit,
    rss_kib,
    start_facade,
    start_nginx,
    start_stub,
)
from bench.report import noise_note, render_markdown, render_table, table_rows

RESULTS = Path(__file__).resolve().parent / "results"
STREAM_CHUNKS = 20
STREAM_DELAY_MS = 5.0
SLOW_DELAY_MS = 50.0


def _sse_outcome(result: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """What every SSE phase records of its outcome: errors, and whether every stream reached the stub."""
    return {
        "errors": sum(result["errors"].values()),
        "error_kinds": result["errors"],
        "sent": result["sent"],
        "completed": result["completed"],
        "served": m["served"],
        "reached_ok": result["completed"] == m["served"] == result["sent"],
        "client_cpu_s": result["client_cpu_s"],
        "elapsed_s": result["elapsed_s"],
    }


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup_s: int
    latency_s: int  # wrk c=1
    throughput_s: int  # wrk c=32 and c=128
    stream_c1_streams: int  # sequential streams at c=1 (20 chunks 5 ms apart: ~0.1 s each)
    stream_c1_busy_streams: int  # sequential streams at c=1, 20 chunks back to back
    stream_c32_s: float  # c=32, 20 chunks 5 ms apart
    stream_rate_s: float  # c=32, 20 chunks back to back
    slow_streams: int
    slow_rounds: int
    slow_chunks: int
    slow_ramp_s: float
    soak_requests: int
    soak_segment_s: int
    soak_max_s: int


FULL = Plan(
    rounds=3,
    warmup_s=2,
    latency_s=4,
    throughput_s=4,
    stream_c1_streams=40,
    stream_c1_busy_streams=400,
    stream_c32_s=4.0,
    stream_rate_s=3.0,
    slow_streams=1000,
    slow_rounds=2,
    slow_chunks=60,
    slow_ramp_s=1.0,
    soak_requests=200_000,
    soak_segment_s=5,
    soak_max_s=300,
)
QUICK = Plan(
    rounds=1,
    warmup_s=1,
    latency_s=1,
    throughput_s=1,
    stream_c1_streams=10,
    stream_c1_busy_streams=50,
    stream_c32_s=1.0,
    stream_rate_s=1.0,
    slow_streams=200,
    slow_rounds=1,
    slow_chunks=20,
    slow_ramp_s=0.5,
    soak_requests=5_000,
    soak_segment_s=1,
    soak_max_s=20,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(
        self,
        plan: Plan,
        cores: Cores,
        stub: Service,
        targets: list[Service],
        fresh_facade: Callable[[], Service] | None = None,
    ) -> None:
        self.fresh_facade = fresh_facade
        self.plan = plan
        self.cores = cores
        self.stub = stub
        self.targets = targets
        # phase -> target -> list of per-round measurements
        self.phases: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.peak_rss_kib: dict[str, int] = {}
        self.idle_rss_kib: dict[str, int] = {}
        self.checks: dict[str, dict[str, Any]] = {}

    # -------------------------------------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def measuring(self, target: Service, served_key: str) -> Iterator[dict[str, Any]]:
        """Stub counter delta, proxy CPU time delta and proxy peak RSS around one measurement."""
        out: dict[str, Any] = {}
        before = self.settled_stats(served_key)
        pid = target.measured_pid
        cpu0 = cpu_times(pid) if pid else (0.0, 0.0)
        sampler = RssSampler(pid) if pid else None
        proxies = {t.measured_pid for t in [*self.targets, target] if t.measured_pid and t.alive()}
        meter = LoadMeter([self.stub.process.pid, *proxies])
        if sampler:
            sampler.__enter__()
        try:
            yield out
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
                out["peak_rss_mib"] = sampler.peak_kib / 1024
                self.peak_rss_kib[target.name] = max(self.peak_rss_kib.get(target.name, 0), sampler.peak_kib)
        out.update(meter.stop())
        # An overloaded proxy may still be forwarding requests it had accepted when the load stopped: count
        # them here, not in the next measurement.
        after = self.settled_stats(served_key)
        if pid:
            cpu1 = cpu_times(pid)
            out["cpu_s"] = sum(cpu1) - sum(cpu0)
            out["cpu_sys_s"] = cpu1[1] - cpu0[1]
        out["served"] = after[served_key] - before[served_key]
        out["stub_after"] = after
        if not target.alive():
            raise RuntimeError(f"{target.name} died during the benchmark:\n{target.log_tail()}")

    def settled_stats(self, key: str, quiet_s: float = 0.3, limit_s: float = 30.0) -> dict[str, int]:
        """The stub's counters once `key` has not moved for `quiet_s` (nothing is in flight any more)."""
        deadline = time.monotonic() + limit_s
        stats = stub_stats(self.stub.base_url)
        while True:
            time.sleep(quiet_s)
            again = stub_stats(self.stub.base_url)
            if again[key] == stats[key] or time.monotonic() > deadline:
                return again
            stats = again

    def record(self, phase: str, target: Service, data: dict[str, Any], m: dict[str, Any]) -> None:
        data["foreign_cores"] = round(m["foreign_cores"], 3)
        data["steal_cores"] = round(m["steal_cores"], 3)
        if m.get("cpu_s"):
            data["cpu_sys_share"] = round(m["cpu_sys_s"] / m["cpu_s"], 3)
        if "peak_rss_mib" in m:
            data["peak_rss_mib"] = round(m["peak_rss_mib"], 2)
        self.phases.setdefault(phase, {}).setdefault(target.name, []).append(data)

    def order(self, round_index: int) -> list[Service]:
        shift = round_index % len(self.targets)
        return self.targets[shift:] + self.targets[:shift]

    # -------------------------------------------------------------------------------------------- phases

    def wrk_phase(self, phase: str, target: Service, connections: int, seconds: int) -> dict[str, Any]:
        with self.measuring(target, "chat") as m:
            result = run_wrk(self.cores, target.base_url, connections, seconds)
        data: dict[str, Any] = {
            "connections": connections,
            "rps": result["req_per_s"],
            "p50_ms": result["latency_us"]["p50"] / 1000,
            "p90_ms": result["latency_us"]["p90"] / 1000,
            "p99_ms": result["latency_us"]["p99"] / 1000,
            "p999_ms": result["latency_us"]["p999"] / 1000,
            "mean_ms": result["latency_us"]["mean"] / 1000,
            "errors": result["errors_total"],
            "error_kinds": result["errors"],
            "sent": result["sent"],
            "completed": result["requests"],
            "served": m["served"],
            # wrk stops on a clock: the requests it had written but not yet seen answered when it stopped may
            # or may not have reached the stub, so completed <= served <= sent is the exact check.
            "reached_ok": result["requests"] <= m["served"] <= result["sent"],
        }
        if "cpu_s" in m:
            data["cpu_s"] = m["cpu_s"]
            data["cpu_per_req_us"] = m["cpu_s"] / max(1, m["served"]) * 1e6
        self.record(phase, target, data, m)
        return data

    def stream_phase(self, phase: str, target: Service, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        chunks = spec["body"]["bench_chunks"]
        with self.measuring(target, "chat_stream") as m:
            result = run_sse(self.cores, target.port, spec, timeout)
        data: dict[str, Any] = {
            "concurrency": spec.get("concurrency"),
            "chunks": chunks,
            "chunk_delay_ms": spec["body"]["bench_chunk_delay_ms"],
            "streams_per_s": result["streams_per_s"],
            "ttfb_p50_ms": result["first_event_us"].get("p50", 0) / 1000,
            "ttfb_p99_ms": result["first_event_us"].get("p99", 0) / 1000,
            "headers_p50_ms": result["ttfb_us"].get("p50", 0) / 1000,
            "total_p50_ms": result["total_us"].get("p50", 0) / 1000,
            "total_p99_ms": result["total_us"].get("p99", 0) / 1000,
            **_sse_outcome(result, m),
        }
        if "cpu_s" in m:
            data["cpu_s"] = m["cpu_s"]
            data["cpu_per_stream_us"] = m["cpu_s"] / max(1, m["served"]) * 1e6
        self.record(phase, target, data, m)
        return data

    def slow_phase(self, target: Service) -> dict[str, Any]:
        plan = self.plan
        spec = {
            "mode": "slow",
            "streams": plan.slow_streams,
            "ramp_s": plan.slow_ramp_s,
            "timeout_s": 60,
            "body": stream_body(plan.slow_chunks, SLOW_DELAY_MS),
        }
        stub_stats(self.stub.base_url, "/stats/reset-peaks")
        timeout = plan.slow_ramp_s + plan.slow_chunks * SLOW_DELAY_MS / 1000 + 90
        with self.measuring(target, "chat_stream") as m:
            result = run_sse(self.cores, target.port, spec, timeout)
        delay = result["event_delay_us"]
        data: dict[str, Any] = {
            "streams": plan.slow_streams,
            "chunks": plan.slow_chunks,
            "delay_p50_ms": delay.get("p50", 0) / 1000,
            "delay_p99_ms": delay.get("p99", 0) / 1000,
            "delay_p999_ms": delay.get("p999", 0) / 1000,
            "delay_max_ms": delay.get("max", 0) / 1000,
            "events": delay.get("n", 0),
            "max_open_at_stub": m["stub_after"]["max_open_streams"],
            **_sse_outcome(result, m),
        }
        if "cpu_s" in m:
            data["cpu_s"] = m["cpu_s"]
            data["cpu_per_event_us"] = m["cpu_s"] / max(1, data["events"]) * 1e6
        self.record("slow", target, data, m)
        return data

    def soak(self, target: Service) -> dict[str, Any]:
        """wrk c=32 in segments until >= soak_requests after a warm-up segment; RSS after every segment."""
        plan = self.plan
        assert target.measured_pid is not None
        samples: list[dict[str, float]] = []
        total = 0
        errors = 0
        sent = 0
        served = 0
        deadline = time.monotonic() + plan.soak_max_s
        baseline_requests = None
        foreign: list[float] = []
        while True:
            with self.measuring(target, "chat") as m:
                result = run_wrk(self.cores, target.base_url, 32, plan.soak_segment_s)
            total += result["requests"]
            foreign.append(m["foreign_cores"])
            sent += result["sent"]
            served += m["served"]
            errors += result["errors_total"]
            rss, hwm = rss_kib(target.measured_pid)
            samples.append({"requests": total, "rss_mib": rss / 1024, "hwm_mib": hwm / 1024})
            if baseline_requests is None:
                baseline_requests = total  # the first segment is the warm-up; RSS after it is the baseline
            if total - baseline_requests >= plan.soak_requests or time.monotonic() > deadline:
                break
        base = samples[0]["rss_mib"]
        last = samples[-1]["rss_mib"]
        half = samples[len(samples) // 2]
        return {
            "target": target.name,
            "requests_after_baseline": total - (baseline_requests or 0),
            "requests_total": total,
            "errors": errors,
            "sent": sent,
            "served": served,
            "reached_ok": total <= served <= sent,
            "baseline_rss_mib": base,
            "final_rss_mib": last,
            "growth_mib": last - base,
            "growth_second_half_mib": last - half["rss_mib"],
            "max_rss_mib": max(sample["rss_mib"] for sample in samples),
            "complete": total - (baseline_requests or 0) >= plan.soak_requests,
            "foreign_cores_max": max(foreign),
            "samples": samples,
        }

    # -------------------------------------------------------------------------------------------- checks

    def check_targets(self) -> None:
        """Each target answers a chat completion and a stream correctly; bodies match the direct upstream's."""
        reference: bytes | None = None
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            for target in self.targets:
                response = client.post(f"{target.base_url}/v1/chat/completions", json=CHAT_BODY)
                if response.status_code != 200 or b'"chat.completion"' not in response.content:
                    raise RuntimeError(
                        f"{target.name}: POST /v1/chat/completions -> {response.status_code}: {response.text[:300]}"
                    )
                if reference is None:
                    reference = response.content
                events = 0
                done = False
                with client.stream("POST", f"{target.base_url}/v1/chat/completions", json=stream_body(5, 1)) as stream:
                    if stream.status_code != 200:
                        raise RuntimeError(f"{target.name}: stream -> {stream.status_code}")
                    for line in stream.iter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data:"):
                            events += 1
                self.checks[target.name] = {
                    "status": response.status_code,
                    "body_identical_to_direct": response.content == reference,
                    "stream_events": events,
                    "stream_done": done,
                    "stream_ok": events == 5 and done,
                }
                if not (events == 5 and done):
                    raise RuntimeError(f"{target.name}: stream gave {events} events, [DONE]={done}")

    # -------------------------------------------------------------------------------------------- the run

    def run(self) -> dict[str, Any]:
        plan = self.plan
        self.check_targets()
        for target in self.targets:
            if target.measured_pid:
                self.idle_rss_kib[target.name] = rss_kib(target.measured_pid)[0]
            log(f"warm-up {target.name}")
            run_wrk(self.cores, target.base_url, 32, plan.warmup_s)
            run_sse(self.cores, target.port, self.seq_spec(32, 64, 5.0, 0.0), 60)

        for round_index in range(plan.rounds):
            for target in self.order(round_index):
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: latency c=1")
                self.wrk_phase("lat_c1", target, 1, plan.latency_s)
            for target in self.order(round_index):
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: throughput c=32")
                self.wrk_phase("tp_c32", target, 32, plan.throughput_s)
            for target in self.order(round_index):
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: throughput c=128")
                self.wrk_phase("tp_c128", target, 128, plan.throughput_s)
            for target in self.order(round_index):
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: streams c=1 (20 chunks, 5 ms apart)")
                spec = self.seq_spec(1, plan.stream_c1_streams, 600.0, STREAM_DELAY_MS)
                self.stream_phase("st_c1", target, spec, 120)
            for target in self.order(round_index):
                # The same first token, from a core that never idles long enough to go cold (see README).
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: streams c=1 (20 chunks, back to back)")
                spec = self.seq_spec(1, plan.stream_c1_busy_streams, 600.0, 0.0)
                self.stream_phase("st_c1_busy", target, spec, 120)
            for target in self.order(round_index):
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: streams c=32 (20 chunks, 5 ms apart)")
                spec = self.seq_spec(32, 10**7, plan.stream_c32_s, STREAM_DELAY_MS)
                self.stream_phase("st_c32", target, spec, plan.stream_c32_s + 90)
            for target in self.order(round_index):
                log(f"round {round_index + 1}/{plan.rounds} {target.name}: streams c=32 (20 chunks, back to back)")
                spec = self.seq_spec(32, 10**7, plan.stream_rate_s, 0.0)
                self.stream_phase("st_rate", target, spec, plan.stream_rate_s + 90)
        # After the rounds above, so the heap they leave behind does not colour their RSS rows.
        for round_index in range(plan.slow_rounds):
            for target in self.order(round_index):
                log(
                    f"round {round_index + 1}/{plan.slow_rounds} {target.name}: "
                    f"{plan.slow_streams} concurrent slow streams ({SLOW_DELAY_MS:g} ms apart)"
                )
                self.slow_phase(target)
        for target in self.targets:
            if target.measured_pid:
                self.peak_rss_kib[target.name] = max(
                    self.peak_rss_kib.get(target.name, 0), rss_kib(target.measured_pid)[1]
                )
        soak = None
        facade = next((t for t in self.targets if t.name == "facade"), None)
        if facade is not None and self.fresh_facade is not None:
            # A fresh process: a heap already grown by the earlier phases (1,000 streams) could hide a slow leak
            # in its free space; a new one shows every byte it keeps.
            facade.stop()
            log(f"facade (fresh process): soak of >= {plan.soak_requests:,} requests (c=32)")
            soak = self.soak(self.fresh_facade())
        return {
            "phases": self.phases,
            "soak": soak,
            "peak_rss_kib": self.peak_rss_kib,
            "idle_rss_kib": self.idle_rss_kib,
            "checks": self.checks,
        }

    @staticmethod
    def seq_spec(concurrency: int, streams: int, duration_s: float, delay_ms: float) -> dict[str, Any]:
        return {
            "mode": "sequential",
            "concurrency": concurrency,
            "streams": streams,
            "duration_s": duration_s,
            "timeout_s": 30,
            "body": stream_body(STREAM_CHUNKS, delay_ms),
        }


# ------------------------------------------------------------------------------------------------ machine info


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


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (rough numbers)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2, quick 1)")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx even when installed")
    parser.add_argument("--no-facade", action="store_true", help="skip the facade (develop the bench itself)")
    parser.add_argument("--soak-requests", type=int, help="requests in the soak after its warm-up segment")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON/markdown results")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to use < 0.3 cores (a shared machine)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for the runner and everything it starts (root only; 0 to leave as is). Default -10: "
        "other work on a shared machine then disturbs every target less; CPU time per request is unaffected",
    )
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.rounds:
        overrides["rounds"] = args.rounds
    if args.soak_requests:
        overrides["soak_requests"] = args.soak_requests
    if overrides:
        plan = Plan(**{**asdict(plan), **overrides})
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: run `bash scripts/install-system-packages.sh` (make install-test)", file=sys.stderr
        )
        return 2

    raise_fd_limit()
    niceness = 0
    if args.nice and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            niceness = os.nice(args.nice)
    cores = Cores.pick()
    cores.pin_self_to_load_core()
    busy = wait_quiet(args.wait_quiet)
    log(f"other processes use {busy:.2f} cores right now" + (" (noisy: see the last line)" if busy > 0.3 else ""))
    workdir = make_workdir()
    started = dt.datetime.now(dt.UTC)
    info = machine_info(cores)
    info["niceness"] = niceness
    log(f"cores: load={cores.load} proxy={cores.proxy}; work dir {workdir}")
    skipped: dict[str, str] = {}
    services: list[Service] = []
    begin = time.monotonic()
    try:
        stub = start_stub(workdir, cores)
        services.append(stub)
        direct = Service("direct", stub.port, stub.process, stub.log_path)
        targets = [direct]
        if args.no_facade:
            skipped["facade"] = "--no-facade"
        else:
            ok, reason = facade_available()
            if ok:
                facade = start_facade(workdir, cores, stub)
                services.append(facade)
                targets.append(facade)
            else:
                skipped["facade"] = f"`python -m capibara_facade serve --help` fails: {reason}"
                log(f"facade skipped: {skipped['facade']}")
        if args.no_nginx:
            skipped["nginx"] = "--no-nginx"
        else:
            try:
                nginx = start_nginx(workdir, cores, stub)
            except RuntimeError as exc:  # the floor is a comparison, not the subject: go on without it
                nginx = None
                skipped["nginx"] = f"failed to start: {str(exc).splitlines()[0]}"
                log(f"nginx skipped: {exc}")
            else:
                if nginx is None:
                    skipped["nginx"] = "nginx is not installed"
            if nginx is not None:
                services.append(nginx)
                targets.append(nginx)

        def fresh_facade() -> Service:
            service = start_facade(workdir, cores, stub)
            services.append(service)
            return service

        bench = Bench(plan, cores, stub, targets, fresh_facade if "facade" not in skipped else None)
        raw = bench.run()
    finally:
        for service in reversed(services):
            service.stop()
    elapsed = time.monotonic() - begin
    info["loadavg_end"] = os.getloadavg()
    columns = ["direct", "facade", "nginx"]  # fixed shape; a skipped target shows as "—"
    rows = table_rows(raw, columns, plan)
    mode = "quick" if args.quick else "full"
    title = (
        f"capibara-facade bench ({mode}, {plan.rounds} interleaved round(s), {elapsed:.0f} s) — "
        f"{info['cpu']}, {info['cpus']} cores, proxy pinned to core {cores.proxy}, load on core {cores.load}"
    )
    table = render_table(rows, columns, title, skipped)
    note = noise_note(raw)
    if note:
        table += "\n" + note
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    result = {
        "started": started.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "mode": mode,
        "plan": asdict(plan),
        "machine": info,
        "targets": [t.name for t in targets],
        "skipped": skipped,
        "rows": rows,
        "table": table,
        **raw,
    }
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"{stamp}.md").write_text(
        render_markdown(rows, columns, title, skipped) + (f"\n{note}\n" if note else "")
    )
    log(f"wrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
