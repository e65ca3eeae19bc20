"""Request limits: body size (413), token-bucket rate limits (429) and short lockouts.

Every keyed limiter here holds at most `max_keys` keys and forgets the least recently used
one first, so an attacker rotating addresses or usernames cannot grow memory without bound.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vectorsvc.errors import ServiceError


class RateLimited(ServiceError):
    code = "rate_limited"
    status = 429


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key: `per_minute` sustained, `burst` at once. Thread-safe.

    `what` names the key in the 429 message ("credential", "client address", ...) and
    `setting` the environment variable that changes the rate.
    """

    blocking = False  # True where a decision waits on I/O (`auth.shared_limits`)

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        max_keys: int = 100_000,
        what: str = "credential",
        setting: str = "VECTORSVC_RATE_LIMIT_PER_MINUTE",
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.what = what
        self.setting = setting
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> int | None:
        """Spend one token of `key`'s bucket: None when there was one, else the seconds
        until there is (for Retry-After)."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                # Forgetting the least recently used key only grants it a fresh burst.
                while len(self._buckets) >= self._max_keys:
                    self._buckets.popitem(last=False)
                bucket = self._buckets[key] = _Bucket(tokens=self.burst, updated=now)
            else:
                self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def check(self, key: str) -> None:
        """`take`, raising 429 `rate_limited` with Retry-After when the bucket is empty."""
        retry_after = self.take(key)
        if retry_after is not None:
            raise RateLimited(
                f"rate limit exceeded: at most {round(self.rate * 60)} requests per minute "
                f"per {self.what} (bursts of {int(self.burst)}, {self.setting}); retry after "
                f"{retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )


class Lockout:
    """`failures` failures of a key without a success between them lock it for `lock_s`.

    Thread-safe and bounded like `RateLimiter`; a lock ends on its own, so the worst it
    can do is refuse a key for `lock_s` after the last failure that completed it.
    """

    def __init__(self, failures: int, lock_s: float, *, max_keys: int = 100_000) -> None:
        self.failures = failures
        self.lock_s = lock_s
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()  # count, until
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._entries)

    def locked_for(self, key: str) -> int | None:
        """Whole seconds `key` stays locked, or None when it is not."""
        if self.failures <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        remaining = entry[1] - time.monotonic()
        return max(1, math.ceil(remaining)) if remaining > 0 else None

    def fail(self, key: str) -> None:
        if self.failures <= 0:
            return
        now = time.monotonic()
        with self._lock:
            count, until = self._entries.pop(key, (0, 0.0))
            if until > now:  # a failure that raced the lock does not extend it
                self._entries[key] = (count, until)
                return
            count += 1
            if count >= self.failures:
                count, until = 0, now + self.lock_s
            while len(self._entries) >= self._max_keys:
                self._entries.popitem(last=False)
            self._entries[key] = (count, until)

    def succeed(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def forgive(self, key: str) -> None:
        """Take back one failure counted ahead of its outcome (a lock stays)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > 0:
                self._entries[key] = (entry[0] - 1, entry[1])


class BodySizeLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, by header or while streaming.

    Paths under `exempt_prefixes` (media uploads) enforce their own, larger limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            # Past the limit: answer 413 ourselves and tell the app the client went away.
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "payload_too_large",
                    "message": f"request body is larger than {self.max_bytes} bytes "
                    "(VECTORSVC_MAX_BODY_BYTES); split the request",
                    "field": "body",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
