"""Floods meet 429 (issue 14, item 1): the issue's probes in a smaller form.

- Wrong-password sign-ins, 16 at a time: 429 with Retry-After, not 401 after 401.
- A short lockout per email and address, and per email: a real user elsewhere still gets
  in, unknown emails lock the same way, and the lock ends on its own.
- A sign-in flood runs on its own bounded password-hashing threads: other requests answer
  while its hashes are still running, and the excess is refused at once.
- Made-up API keys: 429 per client address; a valid key from there still works.
- X-Forwarded-For counts only from a trusted proxy; limiter memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from argon2 import PasswordHasher
from pydantic import ValidationError
from sqlalchemy import update
from starlette.requests import Request

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from vectorsvc.accounts.service import create_user
from vectorsvc.auth.throttle import AuthThrottle, client_address
from vectorsvc.config import Settings
from vectorsvc.db.tables import User
from vectorsvc.limits import Lockout, RateLimiter
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace

pytestmark = pytest.mark.anyio

Loader = Callable[[ModelSpec], Embedder]
EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"
WRONG = "not the password"
SIGN_IN_429_CODES = {"rate_limited", "sign_in_locked", "sign_in_busy"}


def service_with(
    tmp_path: Path, models_dir: Path, loader: Loader, **overrides: Any
) -> AbstractAsyncContextManager[Service]:
    return running_service(make_settings(tmp_path / "data", models_dir, **overrides), loader)


def add_user(service: Service, email: str = EMAIL, password: str = PASSWORD) -> None:
    with service.db.session() as session:
        create_user(
            session, email=email, password=password, workspace=create_workspace(session, name="w")
        )


def throttle_of(service: Service) -> AuthThrottle:
    throttle: AuthThrottle = service.app.state.vectorsvc.auth_throttle
    return throttle


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def sign_in(
    service: Service, email: str = EMAIL, password: str = WRONG, **headers: str
) -> httpx.Response:
    return await service.client.post(
        "/api/auth/sign-in", json={"email": email, "password": password}, headers=headers
    )


async def at_most(n: int, calls: list[Callable[[], Awaitable[httpx.Response]]]) -> list[Any]:
    """Run `calls`, `n` at a time; their responses in call order."""
    limit = anyio.Semaphore(n)
    responses: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        async with limit:
            responses[i] = await calls[i]()

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return responses


def assert_429_with_retry_after(r: httpx.Response, codes: set[str]) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] in codes
    assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1


async def test_wrong_password_flood_meets_429(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    # Default settings: 30 wrong-password sign-ins for one account, 16 at a time.
    async with service_with(tmp_path, models_dir, embedder_loader) as svc:
        add_user(svc)
        responses = await at_most(16, [lambda: sign_in(svc)] * 30)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {401, 429}, statuses
        # Today's code: 30 x 401. Here every attempt counts from the moment it may run,
        # so no more passwords are tried than the lockout allows, however many at once.
        assert 1 <= statuses.count(401) <= svc.settings.sign_in_lockout_failures, statuses
        refused = [r for r in responses if r.status_code == 429]
        for r in refused:
            assert_429_with_retry_after(r, SIGN_IN_429_CODES)
        # The account is now locked from this address, right password or not.
        r = await sign_in(svc, password=PASSWORD)
        assert_429_with_retry_after(r, {"sign_in_locked", "rate_limited"})


async def test_lockout_is_short_per_email_and_address_and_per_email(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    async with service_with(
        tmp_path,
        models_dir,
        embedder_loader,
        trusted_proxies="127.0.0.1",  # lets the test speak from several addresses
        sign_in_lockout_failures=3,
        sign_in_account_lockout_failures=6,
        # Longer than a sign-in takes on a loaded machine: a lock runs from the moment the
        # attempt that completes it is admitted.
        sign_in_lockout_s=5,
    ) as svc:
        add_user(svc)
        a, b, c, d, e = (from_address(f"203.0.113.{i}") for i in range(1, 6))
        for _ in range(3):
            assert (await sign_in(svc, **a)).status_code == 401
        # From there, even the right password waits; the message names the setting.
        locked = await sign_in(svc, password=PASSWORD, **a)
        assert_429_with_retry_after(locked, {"sign_in_locked"})
        assert "VECTORSVC_SIGN_IN_LOCKOUT_S" in locked.json()["error"]["message"]
        # The real user at another address is not locked out by someone else's guesses.
        assert (await sign_in(svc, password=PASSWORD, **b)).status_code == 200
        # An unknown email locks the same way (the answer tells nobody who has an account).
        for _ in range(3):
            assert (await sign_in(svc, email="ghost@example.com", **a)).status_code == 401
        ghost = await sign_in(svc, email="ghost@example.com", **a)
        assert_429_with_retry_after(ghost, {"sign_in_locked"})
        assert ghost.json()["error"]["message"] == locked.json()["error"]["message"]
        # Guesses spread over addresses lock the email everywhere, for sign_in_lockout_s.
        for address in (c, d):
            for _ in range(3):
                assert (await sign_in(svc, **address)).status_code == 401
        everywhere = await sign_in(svc, password=PASSWORD, **e)
        assert_429_with_retry_after(everywhere, {"sign_in_locked"})
        await anyio.sleep(int(everywhere.headers["Retry-After"]) + 0.1)
        assert (await sign_in(svc, password=PASSWORD, **e)).status_code == 200
        assert (await sign_in(svc, password=PASSWORD, **a)).status_code == 200
        # The right password clears the count even where the answer is 403 (not a member).
        for _ in range(2):
            assert (await sign_in(svc, **a)).status_code == 401
        r = await svc.client.post(
            "/api/auth/sign-in",
            json={"email": EMAIL, "password": PASSWORD, "workspace": "elsewhere"},
            headers=a,
        )
        assert r.json()["error"]["code"] == "not_a_member"
        assert [(await sign_in(svc, **a)).status_code for _ in range(4)] == [401, 401, 401, 429]


# About 3 s of one core per check: far longer than any other request here takes.
SLOW_HASHER = PasswordHasher(time_cost=200, memory_cost=16 * 1024, parallelism=1)


async def test_sign_in_flood_leaves_other_requests_answering(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    flood = 48  # more than FastAPI's 40 shared worker threads
    async with service_with(
        tmp_path,
        models_dir,
        embedder_loader,
        password_hash_workers=1,
        password_hash_queue=0,
        sign_in_per_minute=100_000,  # only the hashing bound is under test here
        sign_in_burst=100_000,
        sign_in_lockout_failures=0,
        sign_in_account_lockout_failures=0,
    ) as svc:
        add_user(svc)
        with svc.db.session() as session:  # a real argon2 hash, just a costly one
            session.execute(update(User).values(password_hash=SLOW_HASHER.hash(PASSWORD)))
        key = svc.new_key("w")
        events: list[tuple[str, int]] = []  # (what, status) in the order they answered

        async def flood_one() -> None:
            r = await sign_in(svc)
            events.append(("sign_in", r.status_code))
            if r.status_code == 429:
                assert_429_with_retry_after(r, {"sign_in_busy"})

        async with anyio.create_task_group() as tg:
            for _ in range(flood):
                tg.start_soon(flood_one)
            # Let the flood arrive: here, until the excess has been turned away.
            for _ in range(200):
                if len(events) >= flood - 1:
                    break
                await anyio.sleep(0.05)
            others = [
                ("health", await svc.client.get("/health")),
                (
                    "api_key",
                    await svc.client.get("/api/billing/wallet", headers={"X-API-Key": key}),
                ),
                ("health", await svc.client.get("/health")),
            ]
            for what, r in others:
                assert r.status_code == 200, r.text
                events.append((what, r.status_code))
        answered = [status for what, status in events if what == "sign_in"]
        # One password check ran (one worker, no queue); the rest were refused at once.
        assert sorted(answered) == [401] + [429] * (flood - 1)
        # The other requests answered while that check was still running: before the
        # hashed sign-in came back (today's code: behind the flood, in the queue).
        order = [what for what, status in events if what != "sign_in" or status == 401]
        assert order == ["health", "api_key", "health", "sign_in"], events


async def test_made_up_api_keys_meet_429_per_address(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    # Default settings; the flood also rotates X-Forwarded-For, which no trusted proxy
    # vouches for, so it counts under the real peer address.
    async with service_with(tmp_path, models_dir, embedder_loader) as svc:
        key = svc.new_key("acme")

        def made_up(i: int) -> Callable[[], Awaitable[httpx.Response]]:
            headers = {"X-API-Key": f"vsk_{i:016x}_madeup", **from_address(f"198.51.100.{i % 250}")}
            return lambda: svc.client.get("/api/billing/wallet", headers=headers)

        responses = await at_most(16, [made_up(i) for i in range(300)])
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {401, 429}, statuses  # today's code: 300 x 401
        # A burst of 30, then a token a second: at least 100 refused unless the flood took
        # minutes.
        refused = [r for r in responses if r.status_code == 429]
        assert len(refused) >= 100, statuses
        for r in refused:
            assert_429_with_retry_after(r, {"rate_limited"})
        assert "VECTORSVC_AUTH_FAILURES_PER_MINUTE" in refused[0].json()["error"]["message"]
        # A valid key from the same address is never refused by this limit.
        r = await svc.client.get("/api/billing/wallet", headers={"X-API-Key": key})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("trusted", "separate"), [("127.0.0.1", True), ("10.0.0.0/8", False)])
async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader, trusted: str, separate: bool
) -> None:
    # The test client's peer is 127.0.0.1: a trusted proxy in the first case, not in the
    # second (where the forwarded addresses are attacker-chosen and must not count).
    async with service_with(
        tmp_path,
        models_dir,
        embedder_loader,
        trusted_proxies=trusted,
        auth_failures_per_minute=1,
        auth_failures_burst=3,
    ) as svc:

        async def bad_key(address: str) -> int:
            headers = {"X-API-Key": "vsk_nope", **from_address(f"10.1.2.3, {address}")}
            r = await svc.client.get("/api/billing/wallet", headers=headers)
            return r.status_code

        assert [await bad_key("192.0.2.1") for _ in range(4)] == [401, 401, 401, 429]
        # Requests with no credentials at all count the same.
        r = await svc.client.get("/api/billing/wallet", headers=from_address("192.0.2.1"))
        assert r.status_code == 429
        other = [await bad_key(f"192.0.2.{i}") for i in range(2, 5)]
        assert other == ([401] * 3 if separate else [429] * 3)


async def test_refresh_is_limited_per_address_and_per_user(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    async with service_with(
        tmp_path,
        models_dir,
        embedder_loader,
        trusted_proxies="127.0.0.1",
        sign_in_per_minute=20,  # a token every 3 s: none comes back between quick calls
        sign_in_burst=2,
    ) as svc:
        add_user(svc)

        async def refresh(token: str, address: str) -> httpx.Response:
            return await svc.client.post(
                "/api/auth/refresh", json={"refresh_token": token}, headers=from_address(address)
            )

        # Per address: unknown tokens, then the address's budget is spent.
        assert (await refresh("vsrt_unknown", "192.0.2.9")).status_code == 401
        assert (await refresh("vsrt_unknown", "192.0.2.9")).status_code == 401
        refused = await refresh("vsrt_unknown", "192.0.2.9")
        assert_429_with_retry_after(refused, {"rate_limited"})
        assert "per client address on sign-in and refresh" in refused.json()["error"]["message"]

        r = await sign_in(svc, password=PASSWORD, **from_address("192.0.2.1"))
        assert r.status_code == 200, r.text
        token = r.json()["refresh_token"]
        # Per user: each from a fresh address, the third refresh within the burst waits.
        for address in ("192.0.2.2", "192.0.2.3"):
            r = await refresh(token, address)
            assert r.status_code == 200, r.text
            token = r.json()["refresh_token"]
        refused = await refresh(token, "192.0.2.4")
        assert_429_with_retry_after(refused, {"rate_limited"})
        assert "per user on refresh" in refused.json()["error"]["message"]
        # The refused token was not rotated: after Retry-After it still works.
        await anyio.sleep(int(refused.headers["Retry-After"]) + 0.1)
        assert (await refresh(token, "192.0.2.5")).status_code == 200


async def test_limiter_memory_stays_bounded(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    # An attacker rotating addresses (a trusted proxy passes them on) and emails.
    async with service_with(
        tmp_path,
        models_dir,
        embedder_loader,
        trusted_proxies="127.0.0.1",
        auth_limiter_max_keys=50,
    ) as svc:
        for i in range(300):
            headers = {"X-API-Key": "vsk_nope", **from_address(f"10.{i // 250}.{i % 250}.1")}
            r = await svc.client.get("/api/billing/wallet", headers=headers)
            assert r.status_code == 401  # every address is new, with a fresh budget
        throttle = throttle_of(svc)
        assert len(throttle.failed_auth) == 50
        # Locked keys are bounded the same way (no hashing needed to see it).
        for i in range(300):
            throttle.address_lockout.fail(f"10.0.{i % 250}.1 user{i}@example.com")
            throttle.account_lockout.fail(f"user{i}@example.com")
        assert len(throttle.address_lockout) == 50
        assert len(throttle.account_lockout) == 50


def test_limiters_forget_the_least_recently_used_key() -> None:
    limiter = RateLimiter(1, 2, max_keys=3)
    for key in ("a", "a", "b", "c"):
        assert limiter.take(key) is None
    assert limiter.take("a") is not None  # spent, and now the most recently used
    assert limiter.take("d") is None  # forgets "b", the least recently used
    assert len(limiter) == 3
    assert limiter.take("a") is not None  # still remembered, still spent
    lockout = Lockout(2, 60, max_keys=2)
    for key in ("x", "x", "y"):
        lockout.fail(key)
    assert lockout.locked_for("x") is not None
    assert lockout.locked_for("y") is None  # one failure of two
    lockout.fail("z")  # forgets "x": evicting a lock takes max_keys fresh failures
    assert len(lockout) == 2
    assert lockout.locked_for("x") is None
    lockout.fail("y")
    assert lockout.locked_for("y") is not None
    lockout.succeed("y")
    assert lockout.locked_for("y") is None
    lockout.fail("y")
    lockout.forgive("y")  # an attempt that got no answer
    lockout.fail("y")
    assert lockout.locked_for("y") is None
    lockout.fail("y")
    assert lockout.locked_for("y") is not None


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same /64: one client
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("x" * 500, "x" * 64),
    ],
)
def test_client_address_keys(host: str, key: str) -> None:
    request = Request({"type": "http", "client": (host, 1234), "headers": []})
    assert client_address(request) == key


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert Settings(trusted_proxies=" 10.0.0.5, 172.16.0.0/12,::1 ").trusted_proxy_list == [
        "10.0.0.5",
        "172.16.0.0/12",
        "::1",
    ]
    with pytest.raises(ValidationError, match="VECTORSVC_TRUSTED_PROXIES: 'proxy.local'"):
        Settings(trusted_proxies="10.0.0.5,proxy.local")


async def test_a_forwarded_request_is_not_a_loopback_client_of_metrics(service: Service) -> None:
    # No trusted proxies: a proxy on this host forwarding an outside client must not make
    # it a loopback client (`vectorsvc serve` no longer lets uvicorn rewrite the peer).
    assert (await service.client.get("/metrics")).status_code == 200
    r = await service.client.get("/metrics", headers=from_address("198.51.100.7"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "metrics_forbidden"
