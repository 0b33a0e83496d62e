"""How long and how much each measurement runs: the full plan (`make bench`) and the quick smoke plan."""

from __future__ import annotations

from dataclasses import dataclass

STREAM_CHUNKS = 20  # chunks per stream in every streaming phase but the slow one
STREAM_DELAY_MS = 5.0  # gap between chunks in the "5 ms apart" phases
SLOW_DELAY_MS = 50.0  # gap between chunks of the many slow streams
BURST_CONNECTIONS = 128  # new connections opened at once in the burst phase
BURST_REQUESTS = 20  # requests each of them sends, one after another
# Before a burst the target sits idle this long: longer than the facade's upstream keep-alive expiry (4 s), so
# its upstream connections have expired and the burst finds a cold pool, as after a quiet spell in production.
BURST_IDLE_S = 6.0


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
