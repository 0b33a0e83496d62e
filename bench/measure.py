"""One measurement's bookkeeping: stub counters, proxy CPU time, peak RSS and machine noise around it, and the
store every measurement lands in (phase -> target -> one result per round)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bench.load import stub_stats
from bench.procs import LoadMeter, RssSampler, Service, cpu_times


class Recorder:
    def __init__(self, stub: Service, proxies: list[Service]) -> None:
        self.stub = stub
        # Every proxy process started (the list grows as targets start): their CPU is not "other processes'".
        self.proxies = proxies
        # phase -> target -> list of per-round measurements
        self.phases: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.peak_rss_kib: dict[str, int] = {}
        self.idle_rss_kib: dict[str, int] = {}
        self.checks: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def measuring(self, target: Service, served_key: str) -> Iterator[dict[str, Any]]:
        """Stub counter delta, proxy CPU time delta and proxy peak RSS around one measurement."""
        out: dict[str, Any] = {}
        before = self.settled_stats(served_key)
        pid = target.measured_pid
        cpu0 = cpu_times(pid) if pid else (0.0, 0.0)
        sampler = RssSampler(pid) if pid else None
        proxies = {p.measured_pid for p in [*self.proxies, target] if p.measured_pid and p.alive()}
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
