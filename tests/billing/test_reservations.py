"""Funds reserved in the database (`billing.reservations`, `billing.funds`), on SQLite and on
PostgreSQL: several `Funds` on one database stand for several service processes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, select

from vectorsvc.billing import reservations
from vectorsvc.billing import service as billing
from vectorsvc.billing.funds import Funds
from vectorsvc.billing.service import InsufficientFunds, PendingCharge
from vectorsvc.db.database import MIGRATIONS_DIR, Database
from vectorsvc.db.tables import FundReservation, LedgerEntry, UsageRecord, Wallet
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace

pytestmark = pytest.mark.anyio

PRICE = 100  # micro-credits per execute item of all-minilm-l6-v2 (models.yaml)


def psycopg_url(url: str) -> str:
    """SQLAlchemy's name for psycopg 3 (plain postgresql:// picks it once i-pg's lands)."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'funds.db'}"
    else:
        url = psycopg_url(request.getfixturevalue("postgres_database_url"))
    database = Database(url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def funded(any_db: Database) -> str:
    with any_db.session() as session:
        workspace_id = create_workspace(session, name="acme").id
    billing.top_up(any_db, workspace_id=workspace_id, micro_credits=10 * PRICE)
    return workspace_id


def charge_of(workspace_id: str, spec: ModelSpec, n: int) -> PendingCharge:
    return PendingCharge(
        workspace_id=workspace_id,
        run_id=f"run_{n}",
        spec=spec,
        mode="execute",
        units=Usage(items=1),
        created_at=datetime.now(UTC),
    )


def audit(db: Database, workspace_id: str) -> tuple[int, int, int, int]:
    """balance, reserved, reservation rows, usage cost: read as an auditor would."""
    with db.session() as session:
        balance, reserved = session.execute(
            select(Wallet.balance, Wallet.reserved).where(Wallet.workspace_id == workspace_id)
        ).one()
        rows = session.scalar(select(func.count()).select_from(FundReservation)) or 0
        cost = session.scalar(select(func.coalesce(func.sum(UsageRecord.cost), 0))) or 0
        last = session.scalar(
            select(LedgerEntry.balance_after)
            .where(LedgerEntry.workspace_id == workspace_id)
            .order_by(LedgerEntry.id.desc())
            .limit(1)
        )
    assert last == balance  # the ledger's last entry is the balance
    return int(balance), int(reserved), int(rows), int(cost)


async def test_processes_on_one_database_never_reserve_more_than_the_wallet(
    any_db: Database, funded: str, minilm: ModelSpec
) -> None:
    # Three processes' funds, 30 runs at once, funds for 10.
    processes = [Funds(any_db, opening_micro_credits=0) for _ in range(3)]
    outcomes: list[bool] = []

    async def run(n: int) -> None:
        funds = processes[n % 3]
        try:
            reservation = await funds.reserve(funded, PRICE)
        except InsufficientFunds:
            outcomes.append(False)
            return
        await asyncio.sleep(0.01)  # the run's work, holding its funds
        await funds.settle(reservation, charge_of(funded, minilm, n))
        outcomes.append(True)

    await asyncio.gather(*(run(n) for n in range(30)))
    for funds in processes:
        await funds.aclose()
    assert outcomes.count(True) == 10
    assert audit(any_db, funded) == (0, 0, 0, 10 * PRICE)


async def test_a_released_reservation_is_spendable_by_another_process(
    any_db: Database, funded: str, minilm: ModelSpec
) -> None:
    first, second = (Funds(any_db, opening_micro_credits=0) for _ in range(2))
    held = await first.reserve(funded, 10 * PRICE)
    with pytest.raises(InsufficientFunds) as refused:
        await second.reserve(funded, PRICE)
    assert refused.value.details["reserved_micro_credits"] == 10 * PRICE
    first.release(held)  # the run failed
    await first.flush()
    await second.settle(await second.reserve(funded, PRICE), charge_of(funded, minilm, 1))
    for funds in (first, second):
        await funds.aclose()
    assert audit(any_db, funded) == (9 * PRICE, 0, 0, PRICE)


async def test_a_dead_process_reservation_comes_back_once_it_expires(
    any_db: Database, funded: str
) -> None:
    dead = Funds(any_db, opening_micro_credits=0, reservation_ttl_s=600)
    await dead.reserve(funded, 10 * PRICE)  # and the process dies: never settled
    alive = Funds(any_db, opening_micro_credits=0)
    with pytest.raises(InsufficientFunds):
        await alive.reserve(funded, PRICE)  # still within its time
    assert audit(any_db, funded)[1:3] == (10 * PRICE, 1)
    later = datetime.now(UTC) + timedelta(seconds=601)
    assert reservations.release_expired(any_db, now=later) == 10 * PRICE
    assert reservations.release_expired(any_db, now=later) == 0  # given back once
    await alive.reserve(funded, PRICE)
    await alive.aclose()
    assert audit(any_db, funded)[:3] == (10 * PRICE, PRICE, 1)


async def test_a_refusal_first_gives_back_what_expired(any_db: Database, funded: str) -> None:
    dead = Funds(any_db, opening_micro_credits=0, reservation_ttl_s=0.01)
    await dead.reserve(funded, 10 * PRICE)
    await asyncio.sleep(0.05)
    alive = Funds(any_db, opening_micro_credits=0)
    reservation = await alive.reserve(funded, 10 * PRICE)  # not refused: the dead one's expired
    assert reservation.cost == 10 * PRICE
    await alive.aclose()


async def test_a_refusal_waits_for_a_release_the_writer_is_writing(
    any_db: Database, funded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed run gives its funds back through the writer. Once the writer has taken that
    # release out of its queue, and before its transaction commits, the next run of the
    # same process finds the wallet still held: it must wait for that write, not refuse.
    writing, gate = threading.Event(), threading.Event()
    release = reservations.release

    def held_release(db: Database, reservation_ids: list[str]) -> int:
        writing.set()
        gate.wait(timeout=30)
        return release(db, reservation_ids)

    monkeypatch.setattr(reservations, "release", held_release)
    funds = Funds(any_db, opening_micro_credits=0)
    failed = await funds.reserve(funded, 10 * PRICE)
    funds.release(failed)
    while not writing.is_set():  # the writer holds the release, nothing left queued
        await asyncio.sleep(0.001)
    after = asyncio.create_task(funds.reserve(funded, 10 * PRICE))
    # Code that refuses without waiting answers 402 while the release is still held; code
    # that waits for it is still waiting. Either way, let the release through then.
    await asyncio.wait({after}, timeout=1.0)
    gate.set()
    reservation = await after
    assert reservation.cost == 10 * PRICE
    await funds.aclose()
    assert audit(any_db, funded)[:3] == (10 * PRICE, 10 * PRICE, 1)


async def test_an_unreserved_charge_cannot_take_reserved_funds(
    any_db: Database, funded: str, minilm: ModelSpec
) -> None:
    funds = Funds(any_db, opening_micro_credits=0)
    await funds.reserve(funded, 8 * PRICE)
    with pytest.raises(InsufficientFunds):
        billing.charge(
            any_db,
            workspace_id=funded,
            run_id="run_x",
            spec=minilm,
            mode="index",
            units=Usage(items=2),  # 400 > the 200 left available
        )
    await funds.aclose()
    assert audit(any_db, funded) == (10 * PRICE, 8 * PRICE, 1, 0)


async def test_a_background_reservation_is_drawn_chunk_by_chunk_and_resumed(
    any_db: Database, funded: str
) -> None:
    funds = Funds(any_db, opening_micro_credits=0)
    run = await funds.reserve(funded, 6 * PRICE, key="bg_run_1", expires=False)
    drawn = await funds.draw(run, 2 * PRICE)
    assert (run.cost, drawn.cost) == (4 * PRICE, 2 * PRICE)
    assert reservations.held(any_db, "bg_run_1") == 4 * PRICE
    # A restart: the run's reservation is taken up from the database, not reserved again.
    resumed = await Funds(any_db, opening_micro_credits=0).resume(funded, "bg_run_1", 6 * PRICE)
    assert resumed.cost == 4 * PRICE
    # A chunk larger than what the run still holds reserves the difference.
    bigger = await funds.draw(run, 5 * PRICE)
    assert reservations.held(any_db, "bg_run_1") == 0
    assert audit(any_db, funded)[1] == 2 * PRICE + 5 * PRICE
    for reservation in (drawn, bigger, run):
        funds.release(reservation)
    await funds.aclose()
    assert audit(any_db, funded)[:3] == (10 * PRICE, 0, 0)


def test_migration_0010_goes_down_and_up_again(any_db: Database, funded: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    for target in ("0009", "head"):
        with any_db.engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if target == "0009" else command.upgrade)(config, target)
    # The wallet kept its balance through both; nothing is reserved after the way back up.
    assert audit(any_db, funded)[:3] == (10 * PRICE, 0, 0)
