"""Rate limits, sign-in lockouts and key revocation across replicas on one PostgreSQL
(`auth.shared_limits`): two limiters on one database stand for two service processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from embedders.base import Embedder
from tests.harness import make_settings, running_service
from vectorsvc.auth.keys import _ID_LEN, KEY_PREFIX, revoke_api_key
from vectorsvc.auth.shared_limits import SharedLockout, SharedRateLimiter
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import RateLimit
from vectorsvc.limits import RateLimited
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio


def psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def pg(postgres_database_url: str) -> Iterator[Database]:
    db = Database(psycopg_url(postgres_database_url))
    db.migrate()
    yield db
    db.close()


def test_replicas_share_one_rate_limit_budget(pg: Database) -> None:
    # 6 a minute, bursts of 5: two processes together get 5 at once, not 10.
    replicas = [SharedRateLimiter(pg, 6, 5) for _ in range(2)]
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client(n: int) -> None:
        start.wait()
        for _ in range(3):
            result = replicas[n % 2].take("api_key:k1") is None
            with lock:
                allowed.append(result)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 5 and len(allowed) == 24
    with pytest.raises(RateLimited) as refused:
        replicas[0].check("api_key:k1")
    retry_after = int(refused.value.headers["Retry-After"])
    assert 1 <= retry_after <= 10  # one token every 10 s
    assert replicas[1].take("api_key:other") is None  # keys have budgets of their own


def test_rows_at_rest_are_pruned_and_busy_ones_kept(pg: Database) -> None:
    slow = SharedRateLimiter(pg, 6, 2)  # one token every 10 s
    assert slow.take("busy") is None and slow.take("busy") is None
    assert slow.take("busy") is not None
    fast = SharedRateLimiter(pg, 600_000, 1)  # one token every 0.1 ms
    assert fast.take("at rest") is None
    time.sleep(0.05)  # full again: its row says no more than a fresh one would
    fast.prune()
    with pg.session() as session:
        assert list(session.scalars(select(RateLimit.key))) == ["busy"]


def test_a_sign_in_lockout_holds_on_every_replica(pg: Database) -> None:
    first, second = SharedLockout(pg, 3, 60.0), SharedLockout(pg, 3, 60.0)
    first.fail("ann@example.com")
    second.fail("ann@example.com")
    assert first.locked_for("ann@example.com") is None
    second.forgive("ann@example.com")  # an attempt with no answer takes its count back
    second.fail("ann@example.com")
    assert second.locked_for("ann@example.com") is None
    first.fail("ann@example.com")  # the third failure in a row, counted on both
    assert 55 <= (second.locked_for("ann@example.com") or 0) <= 60
    assert first.locked_for("bob@example.com") is None
    second.succeed("ann@example.com")
    assert first.locked_for("ann@example.com") is None


async def test_replicas_on_postgresql_share_limits_and_see_a_revocation(
    tmp_path: Path,
    postgres_database_url: str,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
) -> None:
    url = psycopg_url(postgres_database_url)

    def settings_of(name: str) -> Settings:
        return make_settings(
            tmp_path / name,
            models_dir,
            database_url=url,
            rate_limit_per_minute=6,
            rate_limit_burst=4,
            api_key_cache_s=0.5,
        )

    async with (
        running_service(settings_of("a"), embedder_loader) as a,
        running_service(settings_of("b"), embedder_loader) as b,
    ):
        key = a.new_key("acme")
        statuses = []
        for n in range(6):
            replica = (a, b)[n % 2]
            r = await replica.client.get("/api/billing/wallet", headers={"X-API-Key": key})
            statuses.append(r.status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]  # one budget of 4, not 4 each
        # Revoked through the database (the CLI): every replica refuses it within the
        # key cache's window.
        key_id = key.removeprefix(KEY_PREFIX)[:_ID_LEN]
        with a.db.session() as session:
            revoke_api_key(session, key_id=key_id)
        await anyio.sleep(0.6)
        for replica in (a, b):
            r = await replica.client.get("/api/billing/wallet", headers={"X-API-Key": key})
            assert r.status_code == 401, r.text
