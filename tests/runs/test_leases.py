"""Background runs leased from the database (`runs.leases`): on one PostgreSQL, several
processes share the runs, each run worked on by one at a time, and a dead process's runs
are taken up by another once its lease lapses, billed once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from embedders.base import Embedder
from tests.harness import make_settings, running_service
from tests.runs.test_background import finished, submit, texts, wait_for
from vectorsvc.billing.money import format_credits
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import BackgroundRun, FundReservation, UsageRecord
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.runs import leases
from vectorsvc.workspaces.service import create_workspace

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=60)
ITEM_COST = 200  # micro-credits per indexed item of all-minilm-l6-v2 (models.yaml)


def psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def pg(postgres_database_url: str) -> Iterator[Database]:
    db = Database(psycopg_url(postgres_database_url))
    db.migrate()
    yield db
    db.close()


def queue_runs(db: Database, n: int) -> list[str]:
    with db.session() as session:
        workspace = create_workspace(session, name="acme")
        for i in range(n):
            session.add(
                BackgroundRun(
                    id=f"run_{i:04d}",
                    workspace_id=workspace.id,
                    model="all-minilm-l6-v2",
                    mode="index",
                    scope="bg",
                    status="queued",
                    total=10,
                    errors=[],
                )
            )
    return [f"run_{i:04d}" for i in range(n)]


def test_processes_claiming_at_once_never_take_the_same_run(pg: Database) -> None:
    runs = queue_runs(pg, 60)
    taken: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def process(owner: str) -> None:
        start.wait()
        taken[owner] = [c.run_id for c in leases.claim(pg, owner=owner, lease=LEASE, limit=20)]

    threads = [threading.Thread(target=process, args=(f"p{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [run for claimed in taken.values() for run in claimed]
    assert len(every) == len(set(every)) == 60  # SKIP LOCKED: disjoint, and all taken
    assert set(every) == set(runs)
    # Held now: nobody else claims them, their owners renew them.
    assert leases.claim(pg, owner="late", lease=LEASE) == []
    assert leases.renew(pg, owner="p0", lease=LEASE) == len(taken["p0"])


def test_a_lapsed_lease_is_taken_up_and_its_old_owner_lets_go(pg: Database) -> None:
    runs = queue_runs(pg, 3)
    assert len(leases.claim(pg, owner="dead", lease=LEASE)) == 3
    assert leases.claim(pg, owner="alive", lease=LEASE) == []
    with pg.session() as session:  # the owner died a minute ago: its lease lapsed
        session.execute(
            update(BackgroundRun).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert sorted(c.run_id for c in leases.claim(pg, owner="alive", lease=LEASE)) == runs
    # Had it only stalled, it finds out before its next chunk: the run is not its own now.
    assert leases.renew(pg, owner="dead", lease=LEASE, run_id=runs[0]) == 0


async def test_a_dead_replicas_run_resumes_on_another_billed_once(
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
            background_chunk_size=8,
            background_lease_s=3,
        )

    async with running_service(settings_of("first"), embedder_loader) as first:
        key = first.new_key("acme")
        # Its worker is gone before it starts the run: as good as dead, its lease held.
        await first.app.state.background_runs.stop()
        accepted = await submit(first, key, texts(40))
        run_id = accepted["id"]
        with first.db.session() as session:
            owner = session.scalar(select(BackgroundRun.lease_owner))
        assert owner is not None
        async with running_service(settings_of("second"), embedder_loader) as second:
            await asyncio.sleep(0.5)
            assert (await wait_for(second, key, run_id, lambda r: True))["status"] == "queued"
            # Within the lease the run stays the dead one's; once it lapses, it is taken up.
            run = await wait_for(second, key, run_id, finished, timeout=120)
            assert run["status"] == "succeeded", run
            assert run["progress"]["done"] == 40
            with second.db.session() as session:
                taken_by = session.scalar(select(BackgroundRun.lease_owner))
                billed = session.scalar(
                    select(func.sum(UsageRecord.items)).where(UsageRecord.mode == "index")
                )
                charges = session.scalar(select(func.count()).select_from(UsageRecord))
                held = session.scalar(select(func.count()).select_from(FundReservation))
            assert taken_by != owner
            assert billed == 40 and charges == 5  # five chunks of 8, each charged once
            assert run["usage"]["cost"] == format_credits(40 * ITEM_COST)
            assert held == 0  # the run's reservation went when it ended
