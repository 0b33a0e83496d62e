"""The limits kept in Redis, shared by every worker and replica: one atomic Lua script per check.

A request costs two round trips: `admit` before it is forwarded (every limit checked, and taken only if all
pass) and `settle` once it is over (tokens corrected to the real usage, its lease ended). Scripts read the
time from Redis itself (TIME), so replicas whose clocks differ still share one timeline. Every key of a
caller carries the same hash tag, `{<prefix>:<caller>}`, so one script touches one Redis Cluster slot. Keys
expire on their own: a TAT when its bucket is full again, a day's budget after two days, a lease set when
its last lease is older than `lease_seconds` (a crashed replica's leases go away with it).
"""

from __future__ import annotations

import asyncio

from .rates import Decision, Limits
from .resp import RespClient, script_sha

__all__ = ["RedisLimiter"]

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: requests TAT, tokens TAT, the day's tokens, leases.
# ARGV: requests/min, tokens/min, max concurrent, daily tokens (0: no limit), cost, lease id, lease ms.
# Returns: allowed, the limit that refused, retry after (ms), then the requests' and the tokens' remaining and
# reset (ms): after this request when it was allowed, as they stand when it was not.
_ADMIT = (
    _NOW
    + """
local period = 60000  -- (compared with 1 ms of slack: rounding must not refuse the last request of a burst)
local rpm, tpm, concurrent, daily = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[7])
local requests_at = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local tokens_at = math.max(tonumber(redis.call('GET', KEYS[2]) or now), now)
local requests_next, tokens_next = requests_at, tokens_at
if rpm > 0 then requests_next = requests_at + period / rpm end
if tpm > 0 then tokens_next = tokens_at + cost * period / tpm end
local reason, retry = '', 0
if concurrent > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) end
if concurrent > 0 and redis.call('ZCARD', KEYS[4]) >= concurrent then
  reason, retry = 'concurrent', 1000
elseif rpm > 0 and requests_next - now > period + 1 then
  reason, retry = 'requests', requests_next - period - now
elseif tpm > 0 and cost > tpm then
  reason = 'too_large'
elseif tpm > 0 and tokens_next - now > period + 1 then
  reason, retry = 'tokens', tokens_next - period - now
elseif daily > 0 and tonumber(redis.call('GET', KEYS[3]) or 0) + cost > daily then
  reason, retry = 'daily', 86400000 - now % 86400000
end
if reason == '' then
  requests_at, tokens_at = requests_next, tokens_next
  if rpm > 0 then
    redis.call('SET', KEYS[1], string.format('%.17g', requests_at), 'PX', math.max(math.ceil(requests_at - now), 1))
  end
  if tpm > 0 then
    redis.call('SET', KEYS[2], string.format('%.17g', tokens_at), 'PX', math.max(math.ceil(tokens_at - now), 1))
  end
  if daily > 0 then
    redis.call('INCRBY', KEYS[3], cost)
    redis.call('EXPIRE', KEYS[3], 172800)
  end
  if concurrent > 0 then
    redis.call('ZADD', KEYS[4], now + lease_ms, ARGV[6])
    redis.call('PEXPIRE', KEYS[4], lease_ms)
  end
end
local function remaining(at, per_minute)
  if per_minute == 0 then return 0 end
  return math.max(math.floor((period - (at - now)) * per_minute / period + 1e-3), 0)
end
return {reason == '' and 1 or 0, reason, math.ceil(retry), remaining(requests_at, rpm), math.ceil(requests_at - now),
        remaining(tokens_at, tpm), math.ceil(tokens_at - now)}
"""
)

# KEYS: tokens TAT, the day's tokens, leases. ARGV: tokens/min, daily limit on (1/0), delta, lease id.
_SETTLE = (
    _NOW
    + """
local tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[3])
if delta ~= 0 and tpm > 0 then
  local at = math.max(tonumber(redis.call('GET', KEYS[1]) or now) + delta * 60000 / tpm, now)
  if at > now then
    redis.call('SET', KEYS[1], string.format('%.17g', at), 'PX', math.ceil(at - now))
  else
    redis.call('DEL', KEYS[1])
  end
end
if delta ~= 0 and ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('INCRBY', KEYS[2], delta) < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[3], ARGV[4]) end
return 1
"""
)

# KEYS: leases. ARGV: lease ms, then the lease ids still in flight (only those still held are renewed).
_RENEW = (
    _NOW
    + """
for index = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[index]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
)

_DAY = 86400
_ADMIT_SHA, _SETTLE_SHA, _RENEW_SHA = (script_sha(script) for script in (_ADMIT, _SETTLE, _RENEW))


class RedisLimiter:
    def __init__(self, url: str, timeout: float, key_prefix: str, lease_seconds: float) -> None:
        self.client = RespClient(url, connect_timeout=max(timeout, 1.0))
        self._prefix = key_prefix
        self._lease_ms = max(int(lease_seconds * 1000), 1)

    def keys(self, key: str, day: int) -> list[str]:
        """A caller's Redis keys, all in one hash slot: requests, tokens, the day's tokens, leases."""
        tag = f"{{{self._prefix}:{key}}}"
        return [f"{tag}:r", f"{tag}:t", f"{tag}:d{day}", f"{tag}:l"]

    async def admit(self, key: str, limits: Limits, cost: int, lease: str, now: float) -> Decision:
        keys = self.keys(key, int(now // _DAY))
        args: list[int | str] = [*_limit_args(limits), cost, lease, self._lease_ms]
        reply = await self.client.evalsha(_ADMIT, _ADMIT_SHA, keys, args)
        allowed, reason, retry_ms, r_left, r_reset_ms, t_left, t_reset_ms = reply
        return Decision(
            bool(allowed), reason.decode(), retry_ms / 1000, r_left, r_reset_ms / 1000, t_left, t_reset_ms / 1000
        )

    async def settle(self, key: str, limits: Limits, delta: int, lease: str, admitted_at: float) -> None:
        _, tokens, day, leases = self.keys(key, int(admitted_at // _DAY))
        held = lease if limits.max_concurrent else ""
        args: list[int | str] = [limits.tokens_per_minute, int(bool(limits.daily_tokens)), delta, held]
        await self.client.evalsha(_SETTLE, _SETTLE_SHA, [tokens, day, leases], args)

    async def renew(self, leases: dict[str, list[str]]) -> None:
        """Push back the expiry of the leases of requests still in flight, by caller key (one pipeline)."""
        await asyncio.gather(
            *(
                self.client.evalsha(_RENEW, _RENEW_SHA, [self.keys(key, 0)[3]], [self._lease_ms, *ids])
                for key, ids in leases.items()
            )
        )

    async def aclose(self) -> None:
        await self.client.aclose()


def _limit_args(limits: Limits) -> list[int]:
    return [limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent, limits.daily_tokens]
