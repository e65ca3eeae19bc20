"""The ledger is exact: every debit has its usage record, concurrent runs never overdraw the
wallet nor lose a debit, and a run is charged at most once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from vectorsvc.billing import service as billing
from vectorsvc.billing.money import format_credits, parse_credits
from vectorsvc.billing.service import ChargeResult, InsufficientFunds
from vectorsvc.db.database import Database
from vectorsvc.db.tables import LedgerEntry, UsageRecord
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace

INDEX_7 = Usage(items=7)  # 7 items at 200 micro-credits = 1400


def ledger(db: Database, workspace_id: str) -> list[LedgerEntry]:
    with db.session() as session:
        return list(
            session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.workspace_id == workspace_id)
                .order_by(LedgerEntry.id)
            )
        )


def usage_cost(db: Database, workspace_id: str) -> int:
    with db.session() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(UsageRecord.cost), 0)).where(
                UsageRecord.workspace_id == workspace_id
            )
        )
        return int(total or 0)


def assert_ledger_consistent(db: Database, workspace_id: str) -> None:
    """Each entry's balance follows from the one before; debits equal the usage records."""
    entries = ledger(db, workspace_id)
    balance = 0
    for entry in entries:
        balance += entry.amount
        assert entry.balance_after == balance >= 0
    assert billing.get_wallet(db, workspace_id=workspace_id).balance == balance
    debits = -sum(e.amount for e in entries if e.kind == "debit")
    assert debits == usage_cost(db, workspace_id)


def test_quote_multiplies_the_mode_price_by_its_unit(minilm: ModelSpec) -> None:
    assert billing.quote(minilm, "index", INDEX_7) == 1400
    assert billing.quote(minilm, "execute", Usage(items=3, queries=9)) == 300
    assert billing.quote(minilm, "search", Usage(queries=1)) == 100
    assert billing.quote(minilm, "delete", Usage()) == 0


def test_credits_are_exact_decimals() -> None:
    assert parse_credits("12.5") == 12_500_000
    assert parse_credits("0.000001") == 1
    assert format_credits(12_500_000) == "12.5"
    assert format_credits(1400) == "0.0014"
    assert format_credits(0) == "0"
    for bad in ("0.0000001", "-1", "abc", "nan"):
        with pytest.raises(ValueError):
            parse_credits(bad)


def test_charge_records_usage_and_debits_in_one_step(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    assert billing.top_up(db, workspace_id=workspace_id, micro_credits=10_000) == 10_000
    result = billing.charge(
        db, workspace_id=workspace_id, run_id="run_1", spec=minilm, mode="index", units=INDEX_7
    )
    assert result == ChargeResult(run_id="run_1", cost=1400, balance_after=8600, charged=True)
    with db.session() as session:
        record = session.scalars(select(UsageRecord)).one()
    assert (record.model, record.mode, record.items, record.unit, record.unit_price) == (
        "all-minilm-l6-v2",
        "index",
        7,
        "chunk",  # MiniLM's index price is per chunk embedded (a short text is one chunk)
        200,
    )
    assert [e.kind for e in ledger(db, workspace_id)] == ["topup", "debit"]
    assert_ledger_consistent(db, workspace_id)


def test_a_run_is_charged_at_most_once(db: Database, workspace_id: str, minilm: ModelSpec) -> None:
    billing.top_up(db, workspace_id=workspace_id, micro_credits=10_000)
    first = billing.charge(
        db, workspace_id=workspace_id, run_id="run_1", spec=minilm, mode="index", units=INDEX_7
    )
    again = billing.charge(
        db, workspace_id=workspace_id, run_id="run_1", spec=minilm, mode="index", units=INDEX_7
    )
    assert first.charged and not again.charged
    assert again.cost == 1400 and again.balance_after == 8600
    assert usage_cost(db, workspace_id) == 1400
    assert_ledger_consistent(db, workspace_id)


def test_a_batch_of_charges_is_exact_and_idempotent(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    billing.top_up(db, workspace_id=workspace_id, micro_credits=10_000)
    searches = [pending(workspace_id, f"run_{i}", minilm) for i in range(5)]
    result = billing.charge_batch(db, searches)
    assert result.balances == {workspace_id: 10_000 - 500} and result.unpaid == []
    again = billing.charge_batch(db, searches[:2])  # already charged: nothing more
    assert again.unpaid == [] and usage_cost(db, workspace_id) == 500
    assert [e.kind for e in ledger(db, workspace_id)] == ["topup"] + ["debit"] * 5
    assert_ledger_consistent(db, workspace_id)


def test_a_batch_larger_than_one_insert_over_two_workspaces(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    """Usage records go in many rows per INSERT: more runs than one holds, two workspaces,
    and runs charged before mixed in, are each recorded and debited exactly once."""
    with db.session() as session:
        other = create_workspace(session, name="other").id
    for ws in (workspace_id, other):
        billing.top_up(db, workspace_id=ws, micro_credits=1_000_000)
    earlier = [pending(workspace_id, f"run_a{i}", minilm) for i in range(0, 1200, 7)]
    billing.charge_batch(db, earlier)
    batch = [pending(workspace_id, f"run_a{i}", minilm) for i in range(1200)]
    batch += [pending(other, f"run_b{i}", minilm) for i in range(30)]
    result = billing.charge_batch(db, batch)
    assert result.unpaid == []
    assert result.balances == {workspace_id: 1_000_000 - 1200 * 100, other: 1_000_000 - 3000}
    for ws, runs in ((workspace_id, 1200), (other, 30)):
        assert usage_cost(db, ws) == runs * 100
        debits = [e for e in ledger(db, ws) if e.kind == "debit"]
        assert len(debits) == len({e.run_id for e in debits}) == runs
        assert_ledger_consistent(db, ws)


def test_a_batch_the_balance_no_longer_covers_is_charged_as_far_as_it_goes(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    # Another process spent the funds this one had reserved: 250 left for five searches.
    billing.top_up(db, workspace_id=workspace_id, micro_credits=250)
    searches = [pending(workspace_id, f"run_{i}", minilm) for i in range(5)]
    result = billing.charge_batch(db, searches)
    assert [p.run_id for p in result.unpaid] == ["run_2", "run_3", "run_4"]
    assert result.balances == {workspace_id: 50}
    assert usage_cost(db, workspace_id) == 200  # the unpaid runs keep no usage record
    assert_ledger_consistent(db, workspace_id)


def pending(workspace_id: str, run_id: str, spec: ModelSpec) -> billing.PendingCharge:
    return billing.PendingCharge(
        workspace_id=workspace_id,
        run_id=run_id,
        spec=spec,
        mode="search",
        units=Usage(queries=1),
        created_at=datetime.now(UTC),
    )


def test_insufficient_funds_writes_nothing(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    billing.top_up(db, workspace_id=workspace_id, micro_credits=1000)
    with pytest.raises(InsufficientFunds) as caught:
        billing.charge(
            db, workspace_id=workspace_id, run_id="run_1", spec=minilm, mode="index", units=INDEX_7
        )
    assert caught.value.status == 402 and caught.value.code == "insufficient_funds"
    assert "0.0014" in caught.value.message and "0.001 credits" in caught.value.message
    assert usage_cost(db, workspace_id) == 0
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert billing.get_wallet(db, workspace_id=workspace_id).balance == 1000
    # A run that failed and never got charged can be charged later under the same id.
    billing.top_up(db, workspace_id=workspace_id, micro_credits=1000)
    assert billing.charge(
        db, workspace_id=workspace_id, run_id="run_1", spec=minilm, mode="index", units=INDEX_7
    ).charged


def test_free_runs_need_no_funds_and_are_still_recorded(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    result = billing.charge(
        db, workspace_id=workspace_id, run_id="run_d", spec=minilm, mode="delete", units=Usage()
    )
    assert result.charged and result.cost == 0 and result.balance_after == 0
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(UsageRecord)) == 1


def test_wallets_open_lazily_with_the_opening_credits(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    # Not opened yet: the balance is the opening credits, and reading it opens nothing.
    assert billing.current_balance(db, workspace_id=workspace_id, opening_micro_credits=5000) == (
        5000
    )
    assert ledger(db, workspace_id) == []
    result = billing.charge(
        db,
        workspace_id=workspace_id,
        run_id="run_1",
        spec=minilm,
        mode="index",
        units=INDEX_7,
        opening_micro_credits=5000,
    )
    assert result.balance_after == 3600
    # Opened once: a later, different opening amount changes nothing.
    assert (
        billing.get_wallet(db, workspace_id=workspace_id, opening_micro_credits=9).balance == 3600
    )
    assert [e.kind for e in ledger(db, workspace_id)] == ["grant", "debit"]
    assert_ledger_consistent(db, workspace_id)


def test_the_database_refuses_a_negative_balance(db: Database, workspace_id: str) -> None:
    billing.top_up(db, workspace_id=workspace_id, micro_credits=10)
    with pytest.raises(IntegrityError), db.session() as session:
        session.execute(text("UPDATE wallets SET balance = -1"))


def test_concurrent_charges_never_overdraw_nor_lose_a_debit(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    affordable = 20
    start = affordable * 1400 + 700  # 20 runs fit, the 21st does not
    billing.top_up(db, workspace_id=workspace_id, micro_credits=start)
    # 50 distinct runs, and 10 of them submitted twice at the same time (retries).
    run_ids = [f"run_{i:02d}" for i in range(50)] + [f"run_{i:02d}" for i in range(10)]
    barrier = threading.Barrier(len(run_ids))

    def attempt(run_id: str) -> ChargeResult | InsufficientFunds:
        barrier.wait()
        try:
            return billing.charge(
                db,
                workspace_id=workspace_id,
                run_id=run_id,
                spec=minilm,
                mode="index",
                units=INDEX_7,
            )
        except InsufficientFunds as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(run_ids)) as pool:
        outcomes = list(pool.map(attempt, run_ids))

    charged = [o for o in outcomes if isinstance(o, ChargeResult) and o.charged]
    refused = [o for o in outcomes if isinstance(o, InsufficientFunds)]
    assert len(charged) == affordable
    assert len({o.run_id for o in charged}) == affordable  # no run charged twice
    assert refused and all(e.status == 402 for e in refused)
    end = billing.get_wallet(db, workspace_id=workspace_id).balance
    assert end == 700
    debits = -sum(e.amount for e in ledger(db, workspace_id) if e.kind == "debit")
    assert usage_cost(db, workspace_id) == debits == start - end == affordable * 1400
    assert_ledger_consistent(db, workspace_id)


def test_concurrent_top_ups_and_charges_keep_the_ledger_exact(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    def work(i: int) -> None:
        if i % 3 == 0:
            billing.top_up(db, workspace_id=workspace_id, micro_credits=2000)
        else:
            try:
                billing.charge(
                    db,
                    workspace_id=workspace_id,
                    run_id=f"run_{i}",
                    spec=minilm,
                    mode="index",
                    units=INDEX_7,
                )
            except InsufficientFunds:
                pass

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(work, range(60)))
    assert_ledger_consistent(db, workspace_id)
    topped = sum(e.amount for e in ledger(db, workspace_id) if e.kind == "topup")
    assert topped == 20 * 2000
    assert billing.get_wallet(db, workspace_id=workspace_id).balance == topped - usage_cost(
        db, workspace_id
    )


def test_a_charge_joins_the_callers_transaction(
    db: Database, workspace_id: str, minilm: ModelSpec
) -> None:
    billing.top_up(db, workspace_id=workspace_id, micro_credits=10_000)
    with pytest.raises(RuntimeError), db.session() as session:
        billing.charge(
            session,
            workspace_id=workspace_id,
            run_id="run_1",
            spec=minilm,
            mode="index",
            units=INDEX_7,
        )
        raise RuntimeError("the write it paid for failed")
    assert usage_cost(db, workspace_id) == 0
    assert billing.get_wallet(db, workspace_id=workspace_id).balance == 10_000
    assert_ledger_consistent(db, workspace_id)
