"""What is measured: the JSON phases (wrk), the stream phases and the many slow streams (the SSE client), the
soak, and the correctness checks before any of it. Each phase measures one target once and records the result
for its round; bench/run.py decides which target runs when."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.load import CHAT_BODY, run_sse, run_wrk, stream_body, stub_stats
from bench.measure import Recorder
from bench.plan import BURST_CONNECTIONS, BURST_IDLE_S, BURST_REQUESTS, SLOW_DELAY_MS, STREAM_CHUNKS, Plan
from bench.procs import Cores, Service, rss_kib


def sequential_spec(concurrency: int, streams: int, duration_s: float, delay_ms: float) -> dict[str, Any]:
    """SSE client spec: `concurrency` connections running streams of 20 chunks `delay_ms` apart back to back."""
    return {
        "mode": "sequential",
        "concurrency": concurrency,
        "streams": streams,
        "duration_s": duration_s,
        "timeout_s": 30,
        "body": stream_body(STREAM_CHUNKS, delay_ms),
    }


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


class Scenarios:
    def __init__(self, plan: Plan, cores: Cores, recorder: Recorder) -> None:
        self.plan = plan
        self.cores = cores
        self.recorder = recorder

    def warm_up(self, target: Service) -> None:
        run_wrk(self.cores, target.base_url, 32, self.plan.warmup_s, headers=target.headers)
        run_sse(self.cores, target.port, sequential_spec(32, 64, 5.0, 0.0), 60, target.headers)

    def wrk_phase(self, phase: str, target: Service, connections: int, seconds: int) -> dict[str, Any]:
        with self.recorder.measuring(target, "chat") as m:
            result = run_wrk(self.cores, target.base_url, connections, seconds, headers=target.headers)
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
        self.recorder.record(phase, target, data, m)
        return data

    def stream_phase(self, phase: str, target: Service, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        chunks = spec["body"]["bench_chunks"]
        with self.recorder.measuring(target, "chat_stream") as m:
            result = run_sse(self.cores, target.port, spec, timeout, target.headers)
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
        self.recorder.record(phase, target, data, m)
        return data

    def burst_phase(self, target: Service) -> dict[str, Any]:
        """BURST_CONNECTIONS new connections at once after BURST_IDLE_S of quiet (a cold upstream pool), each
        sending BURST_REQUESTS JSON requests: the first requests' latency against the later ones'."""
        spec = {
            "mode": "burst",
            "concurrency": BURST_CONNECTIONS,
            "requests": BURST_REQUESTS,
            "timeout_s": 30,
            "body": CHAT_BODY,
        }
        time.sleep(BURST_IDLE_S)
        with self.recorder.measuring(target, "chat") as m:
            result = run_sse(self.cores, target.port, spec, 120, target.headers)
        first, rest = result["first_us"], result["rest_us"]
        data: dict[str, Any] = {
            "connections": BURST_CONNECTIONS,
            "idle_s": BURST_IDLE_S,
            "first_p50_ms": first.get("p50", 0) / 1000,
            "first_p99_ms": first.get("p99", 0) / 1000,
            "first_max_ms": first.get("max", 0) / 1000,
            "rest_p50_ms": rest.get("p50", 0) / 1000,
            "rest_p99_ms": rest.get("p99", 0) / 1000,
            **_sse_outcome(result, m),
        }
        self.recorder.record("burst_c128", target, data, m)
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
        stub_stats(self.recorder.stub.base_url, "/stats/reset-peaks")
        timeout = plan.slow_ramp_s + plan.slow_chunks * SLOW_DELAY_MS / 1000 + 90
        with self.recorder.measuring(target, "chat_stream") as m:
            result = run_sse(self.cores, target.port, spec, timeout, target.headers)
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
        self.recorder.record("slow", target, data, m)
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
            with self.recorder.measuring(target, "chat") as m:
                result = run_wrk(self.cores, target.base_url, 32, plan.soak_segment_s, headers=target.headers)
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

    def check(self, targets: list[Service]) -> None:
        """Each target answers a chat completion and a stream correctly; bodies match the first target's (direct)."""
        reference: bytes | None = None
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            for target in targets:
                url = f"{target.base_url}/v1/chat/completions"
                response = client.post(url, json=CHAT_BODY, headers=target.headers)
                if response.status_code != 200 or b'"chat.completion"' not in response.content:
                    raise RuntimeError(
                        f"{target.name}: POST /v1/chat/completions -> {response.status_code}: {response.text[:300]}"
                    )
                if reference is None:
                    reference = response.content
                events = 0
                done = False
                with client.stream("POST", url, json=stream_body(5, 1), headers=target.headers) as stream:
                    if stream.status_code != 200:
                        raise RuntimeError(f"{target.name}: stream -> {stream.status_code}")
                    for line in stream.iter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data:"):
                            events += 1
                self.recorder.checks[target.name] = {
                    "status": response.status_code,
                    "body_identical_to_direct": response.content == reference,
                    "stream_events": events,
                    "stream_done": done,
                    "stream_ok": events == 5 and done,
                }
                if not (events == 5 and done):
                    raise RuntimeError(f"{target.name}: stream gave {events} events, [DONE]={done}")
