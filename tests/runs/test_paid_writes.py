"""A stored point is always a paid point: a timeout, a shutdown or a failed charge.

The store is the real embedded engine, wrapped so that the upsert takes long enough for a
run's `options.timeout_s` or the service's shutdown to land while it runs (or, for a
failed charge, so that its reservation expires and another process spends the funds
while it runs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.runs.test_background import finished, submit, wait_for
from vectorsvc.billing import reservations
from vectorsvc.billing import service as billing
from vectorsvc.db.tables import UsageRecord
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.vectorstore.base import PointRecord, VectorStore
from vectorsvc.workspaces.service import find_workspace

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
PRICE = 200  # micro-credits per indexed item of MODEL


class SlowUpsert:
    """The real store; each upsert writes, signals `upserted`, then holds its thread until
    `hold_until()` (a monotonic time) so that what cancels the run lands during the write."""

    def __init__(self, store: VectorStore, hold_until: Callable[[], float]) -> None:
        self._store = store
        self._hold_until = hold_until
        self.upserted = threading.Event()

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> None:
        self._store.upsert(collection, points)
        self.upserted.set()
        time.sleep(max(self._hold_until() - time.monotonic(), 0.0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def texts(n: int, prefix: str = "doc") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "text": f"{prefix} number {i} about tides"} for i in range(n)]


def index_body(items: list[dict[str, Any]], scope: str, **options: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "mode": "index",
        "scope": scope,
        "input": {"items": items},
        "options": options,
    }


def stored_count(service: Service, workspace_id: str, scope: str) -> int:
    """Points the store holds in the scope (counted in the store, not the catalog)."""
    state = service.app.state.vectorsvc
    model = state.registry.get(MODEL)
    ns = namespaces.resolve(workspace_id=workspace_id, model=model, scope=scope)
    if not state.store.collection_exists(ns.collection):
        return 0
    return state.store.count(ns.collection, filter=ns.tenant_filter)


def billed_items(service: Service, workspace_id: str) -> int:
    with service.db.session() as session:
        return int(
            session.scalar(
                select(func.coalesce(func.sum(UsageRecord.items), 0)).where(
                    UsageRecord.workspace_id == workspace_id, UsageRecord.mode == "index"
                )
            )
        )


def usage_records(service: Service, workspace_id: str) -> list[tuple[str, int, int]]:
    with service.db.session() as session:
        rows = session.execute(
            select(UsageRecord.run_id, UsageRecord.items, UsageRecord.cost)
            .where(UsageRecord.workspace_id == workspace_id)
            .order_by(UsageRecord.run_id)
        ).all()
    return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def workspace_of(service: Service, name: str) -> str:
    with service.db.session() as session:
        workspace = find_workspace(session, name=name)
        assert workspace is not None
        return workspace.id


async def test_a_timeout_during_the_write_still_charges_what_was_stored(
    service: Service,
) -> None:
    key = service.new_key("acme")
    workspace_id = workspace_of(service, "acme")
    warm = await service.run(key, index_body(texts(1, "warm"), "warm"))  # loads the model
    assert warm.status_code == 200, warm.text
    state = service.app.state.vectorsvc
    timeout_s = 2.0
    deadline = time.monotonic() + timeout_s
    slow = SlowUpsert(state.store, lambda: deadline + 0.3)  # past the run's deadline
    state.store = slow

    r = await service.run(key, index_body(texts(5), "docs", timeout_s=timeout_s))

    state.store = slow._store
    assert slow.upserted.is_set(), "the timeout fired before the write: nothing was tested"
    assert r.status_code in (200, 504), r.text
    stored = stored_count(service, workspace_id, "docs")
    assert stored == 5
    # Stored means paid: the warm-up item and these five.
    assert billed_items(service, workspace_id) == 1 + stored
    # The client's retry finds them stored: skipped, not charged again.
    again = await service.run(key, index_body(texts(5), "docs"))
    assert again.status_code == 200, again.text
    assert again.json()["usage"]["skipped"] == 5
    assert billed_items(service, workspace_id) == 1 + stored


async def test_a_background_chunk_cut_by_shutdown_is_charged(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=4)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        workspace_id = workspace_of(svc, "acme")
        state = svc.app.state.vectorsvc
        slow = SlowUpsert(state.store, lambda: time.monotonic() + 0.5)
        state.store = slow
        accepted = await submit(svc, key, texts(8), scope="bg")
        while not slow.upserted.is_set():
            await anyio.sleep(0.01)
        # Cancelled while its first chunk is being written, and the service stops: the
        # chunk's write and charge finish first.
        r = await svc.client.post(f"/api/runs/{accepted['id']}/cancel", headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
    state.store = slow._store
    async with running_service(settings, embedder_loader) as svc:
        run = await wait_for(svc, key, accepted["id"], finished)
        assert run["status"] == "cancelled", run
        stored = stored_count(svc, workspace_id, "bg")
        assert stored == 4
        assert billed_items(svc, workspace_id) == stored == run["progress"]["done"]


async def test_a_write_whose_charge_fails_is_removed_not_left_unpaid(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, default_workspace_credits=0)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        workspace_id = workspace_of(svc, "acme")
        billing.top_up(svc.db, workspace_id=workspace_id, micro_credits=5 * PRICE)
        state = svc.app.state.vectorsvc
        real_store = state.store

        class SpentMeanwhile(SlowUpsert):
            """After the write lands, its reservation expires (as if the run had outlived
            VECTORSVC_RESERVATION_TTL_S) and another process spends part of the funds."""

            def upsert(self, collection: str, points: Sequence[PointRecord]) -> None:
                super().upsert(collection, points)
                later = datetime.now(UTC) + timedelta(days=2)
                assert reservations.release_expired(svc.db, now=later) == 5 * PRICE
                billing.charge(
                    svc.db,
                    workspace_id=workspace_id,
                    run_id="run_of_another_process",
                    spec=state.registry.get(MODEL),
                    mode="index",
                    units=Usage(items=1),
                )

        state.store = SpentMeanwhile(real_store, time.monotonic)
        r = await svc.run(key, index_body(texts(5), "docs"))
        state.store = real_store
        assert r.status_code == 402, r.text
        # The charge could not be made: the write is undone, not left stored for free.
        assert stored_count(svc, workspace_id, "docs") == 0
        assert billed_items(svc, workspace_id) == 1  # the other process's item only
        kbs = await svc.client.get("/api/knowledge-bases", headers={"X-API-Key": key})
        assert kbs.json()["count"] == 0
