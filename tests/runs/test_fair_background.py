"""Background runs share the worker fairly, queues are bounded, queued runs hold their funds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.runs.test_background import MODEL, finished, point_count, status, submit, texts, wait_for
from vectorsvc.db.tables import BackgroundRunInputs, UsageRecord
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.runs.background import BackgroundRuns

pytestmark = pytest.mark.anyio

Loader = Callable[[ModelSpec], Embedder]
# all-minilm-l6-v2 indexes at 200 micro-credits an item (models.yaml).
ITEM = "0.0002"


def credits_for(items: int) -> str:
    return f"{items * 200 / 1_000_000:.6f}"


def index_body(items: list[Any], scope: str = "bg") -> dict[str, Any]:
    return {
        "model": MODEL,
        "mode": "index",
        "scope": scope,
        "input": {"items": items},
        "options": {"background": True},
    }


def worker(svc: Service) -> BackgroundRuns:
    runs: BackgroundRuns = svc.app.state.background_runs
    return runs


def charged_chunks(svc: Service, run_id: str, before_record: int | None = None) -> int:
    """Chunks of the run charged so far (before usage record `before_record`, if given)."""
    query = select(func.count(UsageRecord.id)).where(UsageRecord.run_id.like(f"{run_id}:%"))
    if before_record is not None:
        query = query.where(UsageRecord.id < before_record)
    with svc.db.session() as session:
        return int(session.scalar(query) or 0)


async def test_a_small_run_goes_ahead_of_another_workspaces_large_queue(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    # 400 short items in chunks of 4: workspace A has 100 chunks queued.
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=4)
    async with running_service(settings, embedder_loader) as svc:
        big_key, small_key = svc.new_key("big"), svc.new_key("small")
        big = await submit(svc, big_key, texts(400))
        await wait_for(svc, big_key, big["id"], lambda r: r["progress"]["done"] >= 8)
        small = await submit(svc, small_key, texts(1, start=9000))
        big_chunks_at_submit = charged_chunks(svc, big["id"])  # read after: an upper bound

        run = await wait_for(svc, small_key, small["id"], finished)
        assert run["status"] == "succeeded", run
        assert run["progress"]["done"] == 1
        big_now = await status(svc, big_key, big["id"])
        assert big_now["status"] == "running"
        assert big_now["progress"]["done"] < 200  # most of A's run is still to come
        with svc.db.session() as session:
            small_record = session.scalar(
                select(UsageRecord.id).where(UsageRecord.run_id.like(f"{small['id']}:%"))
            )
        assert small_record is not None
        # B's one chunk waited for at most A's chunk in flight and one more turn of A.
        waited = charged_chunks(svc, big["id"], before_record=small_record) - big_chunks_at_submit
        assert waited <= 2, waited

        done = await wait_for(svc, big_key, big["id"], finished)
        assert done["status"] == "succeeded"
        assert done["progress"]["done"] == 400
        assert await point_count(svc, big_key, "bg") == 400


async def test_a_workspace_queue_is_bounded_and_refusal_loses_nothing(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    settings = make_settings(
        tmp_path / "data", models_dir, background_chunk_size=8, max_queued_items_per_workspace=100
    )
    async with running_service(settings, embedder_loader) as svc:
        key, other = svc.new_key("acme"), svc.new_key("other")
        await worker(svc).stop()  # the queue holds still while it is filled
        first = await submit(svc, key, texts(60))
        second = await submit(svc, key, texts(40, start=60))  # exactly at the bound

        r = await svc.run(key, index_body(texts(1, start=500)))
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) > 0
        error = r.json()["error"]
        assert error["code"] == "queue_full"
        assert error["field"] == "input.items"
        assert "VECTORSVC_MAX_QUEUED_ITEMS_PER_WORKSPACE" in error["message"]
        assert error["details"] == {"limit": 100, "queued": 100, "items": 1}
        # A run larger than the bound itself could never be queued: 422, not "retry later".
        r = await svc.run(other, index_body(texts(101)))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "too_many_items"
        # Another workspace's bound is its own.
        third = await submit(svc, other, texts(5))
        listing = await svc.client.get("/api/runs", headers={"X-API-Key": key})
        assert listing.json()["count"] == 2

        await worker(svc).start()
        for run_key, run_id, total in ((key, first["id"], 60), (key, second["id"], 40)):
            run = await wait_for(svc, run_key, run_id, finished)
            assert run["status"] == "succeeded" and run["progress"]["done"] == total
        assert (await wait_for(svc, other, third["id"], finished))["status"] == "succeeded"
        assert await point_count(svc, key, "bg") == 100
        # Processed items no longer count: the workspace may queue again.
        again = await submit(svc, key, texts(100, start=100))
        assert (await wait_for(svc, key, again["id"], finished))["status"] == "succeeded"


async def test_a_queued_run_reserves_its_funds_until_it_ends(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    settings = make_settings(
        tmp_path / "data",
        models_dir,
        background_chunk_size=8,
        default_workspace_credits=credits_for(101),
    )
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        await worker(svc).stop()
        items = texts(100)
        for blank in (3, 30, 50, 70, 99):  # these fail alone: 95 items are billed
            items[blank]["text"] = "   "
        first = await submit(svc, key, items)
        # The wallet covers this 2-item run on its own, but not beside the queued one.
        r = await svc.run(key, index_body(texts(2, start=500)))
        assert r.status_code == 402, r.text
        error = r.json()["error"]
        assert error["code"] == "insufficient_funds"
        assert error["details"]["balance"] == ITEM  # 101 items' credits, 100 reserved
        assert error["details"]["reserved"] == credits_for(100).rstrip("0")
        listing = await svc.client.get("/api/runs", headers={"X-API-Key": key})
        assert listing.json()["count"] == 1

        await worker(svc).start()
        run = await wait_for(svc, key, first["id"], finished)
        assert run["status"] == "succeeded"
        assert (run["progress"]["done"], run["progress"]["failed"]) == (95, 5)
        # What the 5 failed items had reserved came back with the run's end: 6 items left.
        r = await svc.client.get("/api/billing/wallet", headers={"X-API-Key": key})
        assert r.json()["balance"] == credits_for(6).rstrip("0")
        await worker(svc).stop()
        cancelled = await submit(svc, key, texts(6, start=200))
        r = await svc.run(key, index_body(texts(1, start=300)))
        assert r.status_code == 402, r.text
        # A cancelled queued run releases its funds at once.
        r = await svc.client.post(f"/api/runs/{cancelled['id']}/cancel", headers={"X-API-Key": key})
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        lost = await submit(svc, key, texts(6, start=400))
        r = await svc.run(key, index_body(texts(1, start=300)))
        assert r.status_code == 402, r.text
        # So does a run that fails: here its items are gone when the worker reaches it.
        with svc.db.session() as session:
            session.execute(
                delete(BackgroundRunInputs).where(BackgroundRunInputs.run_id == lost["id"])
            )
        await worker(svc).start()
        run = await wait_for(svc, key, lost["id"], finished)
        assert run["status"] == "failed" and run["error"]["code"] == "inputs_lost"
        last = await submit(svc, key, texts(6, start=600))
        run = await wait_for(svc, key, last["id"], finished)
        assert run["status"] == "succeeded" and run["progress"]["done"] == 6
        r = await svc.client.get("/api/billing/wallet", headers={"X-API-Key": key})
        assert r.json()["balance"] == "0"


async def test_reservations_of_queued_runs_are_recomputed_after_a_restart(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    settings = make_settings(
        tmp_path / "data",
        models_dir,
        background_chunk_size=4,
        default_workspace_credits=credits_for(201),
    )
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        await worker(svc).stop()
        queued = await submit(svc, key, texts(200))
    # A fresh process: nothing in memory but what it reads back from the database.
    async with running_service(settings, embedder_loader) as svc:
        r = await svc.run(key, index_body(texts(2, start=500)))
        assert r.status_code == 402, r.text  # 201 items' credits, the queued 200 reserved
        run = await wait_for(svc, key, queued["id"], finished)
        assert run["status"] == "succeeded" and run["progress"]["done"] == 200
        assert charged_chunks(svc, queued["id"]) == 50
        one = await submit(svc, key, texts(1, start=500))
        assert (await wait_for(svc, key, one["id"], finished))["status"] == "succeeded"


async def test_many_workspaces_take_turns_and_each_run_keeps_its_duplicates_rule(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    # More workspaces than runs kept open in memory: each turn reads a run back from its file.
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=4)
    async with running_service(settings, embedder_loader) as svc:
        keys = [svc.new_key(f"ws{n}") for n in range(6)]
        await worker(svc).stop()
        runs = []
        for key in keys:
            items = texts(40)
            items[1]["text"] = "   "  # invalid: its id is not taken...
            items[20]["id"] = items[1]["id"]  # ...so this later item with that id is indexed
            items[30]["id"] = items[2]["id"]  # a real duplicate
            runs.append(await submit(svc, key, items))
        await worker(svc).start()
        for key, accepted in zip(keys, runs, strict=True):
            run = await wait_for(svc, key, accepted["id"], finished)
            assert run["status"] == "succeeded", run
            assert run["progress"] == {"total": 40, "done": 38, "skipped": 0, "failed": 2}
            assert {e["index"]: e["code"] for e in run["errors"]} == {
                1: "invalid_item",
                30: "duplicate_id",
            }
        with svc.db.session() as session:
            order = session.scalars(select(UsageRecord.run_id).order_by(UsageRecord.id)).all()
        owners = [run_key.split(":")[0] for run_key in order]
        # Round robin: the first turn gives every workspace one chunk, and so does each later
        # turn while all have work.
        for turn in range(10):
            assert sorted(owners[turn * 6 : turn * 6 + 6]) == sorted(r["id"] for r in runs)
