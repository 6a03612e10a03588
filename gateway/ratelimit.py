"""Rate limits: a token bucket per client, and a failed-login counter per source address.

Two backends with the same small interface:

- in memory (the default, for the embedded server): exact within one process,
  thread-safe; with several gunicorn workers each keeps its own counts, so a client
  gets up to `workers` times its limit;
- Redis (`redis_url`): every process and host shares the counts. The bucket is one
  Lua script (read, refill, take, write, run atomically by Redis on Redis's own clock,
  so hosts whose clocks differ agree); the failure counter is INCR with an expiry set
  by the first failure of a window.

`RateLimiter.take(key)` answers 0 when a request may go ahead, else the seconds until it
may; `FailureThrottle.blocked(key)` answers the seconds an address must still wait, and
`FailureThrottle.failed(key)` counts one failed authentication.

When Redis cannot be reached the Redis backends *fail open*: the request goes ahead and
a warning is logged (at most once a minute). The limits protect the gateway from being
overloaded by one client; an outage of the limiter's store must not turn into an
outage of the gateway for every client, and the database behind it still has its own
timeouts. Operators see the warning and fix Redis.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("gateway.ratelimit")

Clock = Callable[[], float]

#: memory backends forget idle keys once they hold this many
_PRUNE_ABOVE = 10_000


class RateLimiter:
    """A token bucket per key: `burst` tokens, refilled at `per_minute` a minute."""

    def take(self, key: str) -> float:          # pragma: no cover - interface
        raise NotImplementedError


class FailureThrottle:
    """Blocks a key for the rest of a window once it has `limit` failures in that window."""

    def blocked(self, key: str) -> float:       # pragma: no cover - interface
        raise NotImplementedError

    def failed(self, key: str) -> None:         # pragma: no cover - interface
        raise NotImplementedError


# --- in memory --------------------------------------------------------------------------

class MemoryRateLimiter(RateLimiter):
    def __init__(self, per_minute: int, burst: int, clock: Clock = time.monotonic):
        self.rate = per_minute / 60.0                 # tokens a second
        self.burst = float(max(1, burst))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}     # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)
            return wait

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they are the same as new ones."""
        full = [k for k, (tokens, when) in self._buckets.items()
                if tokens + (now - when) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


class MemoryFailureThrottle(FailureThrottle):
    def __init__(self, limit: int, window_seconds: float, clock: Clock = time.monotonic):
        self.limit = limit
        self.window = float(window_seconds)
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}       # key -> (window start, count)
        self._lock = threading.Lock()

    def _current(self, key: str, now: float) -> tuple[float, int]:
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window:
            self._windows.pop(key, None)
            return now, 0
        return start, count

    def blocked(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            start, count = self._current(key, now)
            return start + self.window - now if count >= self.limit else 0.0

    def failed(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            start, count = self._current(key, now)
            self._windows[key] = (start, count + 1)
            if len(self._windows) > _PRUNE_ABOVE:
                for old in [k for k, (s, _) in self._windows.items() if now - s >= self.window]:
                    del self._windows[old]


# --- Redis --------------------------------------------------------------------------------

# KEYS[1] the bucket; ARGV: tokens per millisecond, burst. Returns the wait in ms (0: go).
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
"""


class _FailOpen:
    """Logs that Redis is unreachable, at most once a minute per process."""

    def __init__(self) -> None:
        self._last = -math.inf
        self._lock = threading.Lock()

    def warn(self, what: str, exc: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < 60:
                return
            self._last = now
        log.warning("Redis unreachable for %s, letting requests through: %s: %s",
                    what, type(exc).__name__, exc)


class RedisRateLimiter(RateLimiter):
    def __init__(self, client, prefix: str, per_minute: int, burst: int):
        self.client = client
        self.prefix = prefix
        self.rate_ms = per_minute / 60_000.0
        self.burst = max(1, burst)
        self._script = client.register_script(_BUCKET_LUA)
        self._fail_open = _FailOpen()

    def take(self, key: str) -> float:
        import redis
        try:
            wait_ms = self._script(keys=[f"{self.prefix}rate:{key}"],
                                   args=[repr(self.rate_ms), self.burst])
        except redis.RedisError as exc:
            self._fail_open.warn("the rate limit", exc)
            return 0.0
        return int(wait_ms) / 1000.0


class RedisFailureThrottle(FailureThrottle):
    def __init__(self, client, prefix: str, limit: int, window_seconds: float):
        self.client = client
        self.prefix = prefix
        self.limit = limit
        self.window_ms = max(1, int(window_seconds * 1000))
        self._fail_open = _FailOpen()

    def _key(self, key: str) -> str:
        return f"{self.prefix}authfail:{key}"

    def blocked(self, key: str) -> float:
        import redis
        try:
            with self.client.pipeline(transaction=True) as pipe:
                count, ttl_ms = pipe.get(self._key(key)).pttl(self._key(key)).execute()
        except redis.RedisError as exc:
            self._fail_open.warn("the failed-login throttle", exc)
            return 0.0
        if count is None or int(count) < self.limit:
            return 0.0
        return max(ttl_ms, 1) / 1000.0

    def failed(self, key: str) -> None:
        import redis
        try:
            with self.client.pipeline(transaction=True) as pipe:
                # the first failure of a window creates the counter with the window's expiry
                pipe.set(self._key(key), 0, px=self.window_ms, nx=True).incr(self._key(key))
                pipe.execute()
        except redis.RedisError as exc:
            self._fail_open.warn("the failed-login throttle", exc)


# --- from the settings ----------------------------------------------------------------------

@dataclass(frozen=True)
class Limiters:
    """What `gateway.api.protection` keeps in `app.extensions`; None: that limit is off."""

    rate: RateLimiter | None
    auth_failures: FailureThrottle | None


def from_settings(settings) -> Limiters:
    rate_on = settings.rate_limit_per_minute > 0
    auth_on = settings.auth_failures_limit > 0 and settings.auth_failures_window_seconds > 0
    if settings.redis_url and (rate_on or auth_on):
        import redis
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5,
                                      socket_timeout=0.5)
        prefix = settings.redis_key_prefix
        return Limiters(
            RedisRateLimiter(client, prefix, settings.rate_limit_per_minute,
                             settings.rate_limit_burst) if rate_on else None,
            RedisFailureThrottle(client, prefix, settings.auth_failures_limit,
                                 settings.auth_failures_window_seconds) if auth_on else None)
    return Limiters(
        MemoryRateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if rate_on else None,
        MemoryFailureThrottle(settings.auth_failures_limit,
                              settings.auth_failures_window_seconds) if auth_on else None)
