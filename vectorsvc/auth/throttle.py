"""Floods at the door: limits per client address and per account on everything that
authenticates, and a bound on password hashing.

- Failed authentication (401 from `X-API-Key` / `Authorization`) is counted per client
  address; once an address has spent its budget its failures answer 429 `rate_limited`.
  Valid credentials are never refused by this limit, so a misbehaving neighbour behind
  the same NAT cannot lock a working server out.
- Sign-in and refresh attempts are counted per client address (429 `rate_limited`),
  refreshes also per user, failed sign-ins per email and address and per email (a short
  lockout, 429 `sign_in_locked`). Both are checked before any password is hashed.
- Password hashes (argon2: costly by design, in CPU time and memory) run on a small
  executor of their own with a short queue; a sign-in that finds both full answers 429
  `sign_in_busy` at once, and the shared worker threads stay free for other requests.

The client address is the ASGI peer, rewritten from `X-Forwarded-For` only where the peer
is one of `VECTORSVC_TRUSTED_PROXIES` (uvicorn's `ProxyHeadersMiddleware`, see
`vectorsvc.app`). Every count lives in memory, per process, in bounded maps; on
PostgreSQL in the database, shared by every replica (`auth.shared_limits`).
See docs/deployment.md, "Floods", for the trade-offs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.requests import HTTPConnection

from vectorsvc.auth.shared_limits import SharedLockout, SharedRateLimiter
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.errors import ServiceError, Unauthenticated
from vectorsvc.limits import Lockout as MemoryLockout
from vectorsvc.limits import RateLimited
from vectorsvc.limits import RateLimiter as MemoryRateLimiter

T = TypeVar("T")

_MAX_ADDRESS_CHARS = 64


def client_address(connection: HTTPConnection) -> str:
    """The key a client's address is counted under.

    IPv6 addresses count by their /64 (one host commonly holds a whole /64, so counting
    single addresses would let it rotate through 2**64 of them).
    """
    host = connection.client.host if connection.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Not an IP (a unix socket, or a trusted proxy that wrote something else).
        return host[:_MAX_ADDRESS_CHARS] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class HashingBusy(RateLimited):
    code = "sign_in_busy"


class BoundedWork:
    """A thread pool of `workers` threads that admits at most `queue` calls waiting.

    `run` refuses a call beyond that at once (429 `sign_in_busy`, Retry-After 1) instead
    of queueing it: a flood of sign-ins costs at most `workers` busy cores and
    `workers + queue` requests in memory, whatever its size. A slot is given back when
    its call ends, even if the request that waited for it went away first.
    """

    def __init__(self, workers: int, queue: int, *, name: str) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Calls running or waiting now."""
        return self._admitted

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[[], T], *, on_admit: Callable[[], None] | None = None) -> T:
        """`fn()` on the pool; `on_admit` runs once the call has a place, before it starts."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise HashingBusy(
                    f"too many sign-ins are being checked at once (at most {self.workers} "
                    f"password checks run and {self.capacity - self.workers} wait, "
                    "VECTORSVC_PASSWORD_HASH_WORKERS / VECTORSVC_PASSWORD_HASH_QUEUE); "
                    "retry after 1 s",
                    headers={"Retry-After": "1"},
                )
            self._admitted += 1
        try:
            if on_admit is not None:
                on_admit()
            future = self._executor.submit(fn)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        # Cancelling the wait cancels the call if it has not started yet.
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def password_hash_workers(configured: int) -> int:
    """0 is automatic: half the CPUs, at least 1 and at most 4."""
    return configured or max(1, min(4, (os.cpu_count() or 2) // 2))


class AuthThrottle:
    """Every limit on authentication, built from the settings; one per app."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        """`db`: on PostgreSQL, the limits are counted there, shared by every replica
        (`auth.shared_limits`); else in this process's memory."""
        max_keys = settings.auth_limiter_max_keys
        shared = db if db is not None and db.engine.dialect.name == "postgresql" else None

        def RateLimiter(per_minute: int, burst: int, **kwargs: Any) -> MemoryRateLimiter:  # noqa: N802
            if shared is None:
                return MemoryRateLimiter(per_minute, burst, **kwargs)
            return SharedRateLimiter(shared, per_minute, burst, **kwargs)

        def Lockout(failures: int, lock_s: float, **kwargs: Any) -> MemoryLockout:  # noqa: N802
            if shared is None:
                return MemoryLockout(failures, lock_s, **kwargs)
            return SharedLockout(shared, failures, lock_s, **kwargs)

        self.failed_auth = RateLimiter(
            settings.auth_failures_per_minute,
            settings.auth_failures_burst,
            max_keys=max_keys,
            what="client address without valid credentials",
            setting="VECTORSVC_AUTH_FAILURES_PER_MINUTE",
        )
        self.attempts = RateLimiter(
            settings.sign_in_per_minute,
            settings.sign_in_burst,
            max_keys=max_keys,
            what="client address on sign-in and refresh",
            setting="VECTORSVC_SIGN_IN_PER_MINUTE",
        )
        self.refreshes = RateLimiter(
            settings.sign_in_per_minute,
            settings.sign_in_burst,
            max_keys=max_keys,
            what="user on refresh",
            setting="VECTORSVC_SIGN_IN_PER_MINUTE",
        )
        lock_s = settings.sign_in_lockout_s
        self.address_lockout = Lockout(settings.sign_in_lockout_failures, lock_s, max_keys=max_keys)
        self.account_lockout = Lockout(
            settings.sign_in_account_lockout_failures, lock_s, max_keys=max_keys
        )
        self.password_checks = BoundedWork(
            password_hash_workers(settings.password_hash_workers),
            settings.password_hash_queue,
            name="password-hash",
        )

    def auth_failed(self, address: str) -> None:
        """Count a 401 against `address`; raise 429 once its budget is spent."""
        self.failed_auth.check(address)

    async def sign_in(self, *, address: str, email: str, check: Callable[[], T]) -> T:
        """`check()` (which verifies the password, raising `Unauthenticated` when it is
        wrong) under every sign-in limit, each checked before any hashing.

        An attempt counts as a failure from the moment it has a place to run, and a success
        clears the count: however many arrive at once, at most `sign_in_lockout_failures`
        passwords are tried for an email from one address before the lock.
        """
        self.attempts.check(address)
        keys = ((self.address_lockout, _pair(email, address)), (self.account_lockout, email))
        for lockout, key in keys:
            remaining = lockout.locked_for(key)
            if remaining is not None:
                # Unknown emails lock the same way, so this tells nobody an account exists.
                raise RateLimited(
                    "too many failed sign-ins for this email; its sign-ins are paused for "
                    f"{lockout.lock_s:g} s (VECTORSVC_SIGN_IN_LOCKOUT_S); retry after "
                    f"{remaining} s",
                    code="sign_in_locked",
                    headers={"Retry-After": str(remaining)},
                )

        def count_failure() -> None:
            for lockout, key in keys:
                lockout.fail(key)

        try:
            result = await self.password_checks.run(check, on_admit=count_failure)
        except (HashingBusy, Unauthenticated):
            raise  # refused before counting; or a wrong password, counted
        except ServiceError:
            # Raised after the password matched (not a member of that workspace, say).
            for lockout, key in keys:
                lockout.succeed(key)
            raise
        except BaseException:
            for lockout, key in keys:  # failed or abandoned: no answer, so no guess
                lockout.forgive(key)
            raise
        for lockout, key in keys:
            lockout.succeed(key)
        return result

    def admit_refresh(self, address: str) -> None:
        self.attempts.check(address)

    def admit_refresh_of(self, user_id: str) -> None:
        """Per user, checked before the refresh token is rotated (a 429 keeps it usable)."""
        self.refreshes.check(user_id)

    def close(self) -> None:
        self.password_checks.close()


def _pair(email: str, address: str) -> str:
    return f"{address} {email}"
