"""Background index runs: 202 and polling, per-item failures, dedupe, cancel, restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from vectorsvc.db.tables import UsageRecord
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
TOPICS = ["astronomy", "cooking", "football", "chemistry", "poetry", "sailing"]


def texts(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"doc-{i:04d}",
            "text": f"Note {i} about {TOPICS[i % len(TOPICS)]} and its many details.",
            "metadata": {"topic": TOPICS[i % len(TOPICS)], "n": i},
        }
        for i in range(start, start + n)
    ]


async def submit(service: Service, key: str, items: list[Any], scope: str = "bg") -> Any:
    r = await service.run(
        key,
        {
            "model": MODEL,
            "mode": "index",
            "scope": scope,
            "input": {"items": items},
            "options": {"background": True},
        },
    )
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/runs/{r.json()['id']}"
    return r.json()


async def status(service: Service, key: str, run_id: str) -> Any:
    r = await service.client.get(f"/api/runs/{run_id}", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


async def wait_for(
    service: Service, key: str, run_id: str, until: Callable[[Any], bool], timeout: float = 120
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await status(service, key, run_id)
        if until(current):
            return current
        assert asyncio.get_running_loop().time() < deadline, current
        await asyncio.sleep(0.05)


def finished(run: Any) -> bool:
    return run["status"] in ("succeeded", "failed", "cancelled")


async def point_count(service: Service, key: str, scope: str) -> int:
    r = await service.client.get(
        "/api/knowledge-bases", params={"scope_prefix": scope}, headers={"X-API-Key": key}
    )
    return sum(e["point_count"] for e in r.json()["data"] if e["scope"] == scope)


async def test_background_run_indexes_and_lists_per_item_failures(
    service: Service, api_key: str
) -> None:
    items: list[Any] = texts(40)
    items.insert(5, {"id": "blank", "text": "   "})
    items.insert(9, {"id": "no-content"})
    items.insert(12, {"id": "doc-0003", "text": "a second doc-0003"})
    items.insert(20, "not an object")
    items.insert(25, {"id": "huge", "text": "x" * 1_000_001})
    accepted = await submit(service, api_key, items)
    assert accepted["status"] == "queued"
    assert accepted["progress"] == {"total": 45, "done": 0, "skipped": 0, "failed": 0}
    run = await wait_for(service, api_key, accepted["id"], finished)
    assert run["status"] == "succeeded", run
    assert run["progress"] == {"total": 45, "done": 40, "skipped": 0, "failed": 5}
    errors = {e["index"]: e for e in run["errors"]}
    assert set(errors) == {5, 9, 12, 20, 25}
    assert errors[5]["code"] == "invalid_item" and errors[5]["id"] == "blank"
    # The contract's messages, naming the item by its position in the run.
    assert errors[5]["message"] == "input.items[5].text: must contain a non-whitespace character"
    assert errors[9]["code"] == "invalid_item"
    assert errors[9]["message"].startswith("input.items[9].text: required")
    assert errors[12]["code"] == "duplicate_id"
    assert errors[20]["code"] == "invalid_item" and errors[20]["id"] is None
    assert errors[20]["message"] == "input.items[20]: must be a JSON object, not a string"
    assert errors[25]["code"] == "text_too_long"
    assert errors[25]["message"].startswith("input.items[25].text: text has 1000001 characters")
    assert run["usage"]["items"] == 40
    assert run["usage"]["cost"] != "0"
    assert run["timings"]["finished_at"] and run["timings"]["items_per_second"] > 0
    assert await point_count(service, api_key, "bg") == 40
    r = await service.run(
        api_key,
        {"model": MODEL, "mode": "search", "scope": "bg", "input": {"text": "sailing boats"}},
    )
    assert r.json()["output"]["hits"][0]["metadata"]["topic"] == "sailing"
    listing = await service.client.get("/api/runs", headers={"X-API-Key": api_key})
    assert [r["id"] for r in listing.json()["data"]] == [accepted["id"]]


async def test_background_rerun_skips_unchanged_items_and_costs_nothing(
    service: Service, api_key: str
) -> None:
    first = await submit(service, api_key, texts(30))
    await wait_for(service, api_key, first["id"], finished)
    changed = texts(30)
    changed[7]["text"] = "Entirely new words about volcanoes."
    second = await submit(service, api_key, changed)
    run = await wait_for(service, api_key, second["id"], finished)
    assert run["progress"] == {"total": 30, "done": 1, "skipped": 29, "failed": 0}
    with service.db.session() as session:
        items = session.scalar(
            select(func.sum(UsageRecord.items)).where(UsageRecord.run_id.like(f"{second['id']}:%"))
        )
    assert items == 1


async def test_cancel_stops_a_run_and_a_finished_run_cannot_be_cancelled(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=4)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        accepted = await submit(svc, key, texts(400))
        await wait_for(svc, key, accepted["id"], lambda r: r["progress"]["done"] >= 4)
        r = await svc.client.post(f"/api/runs/{accepted['id']}/cancel", headers={"X-API-Key": key})
        assert r.status_code == 200
        run = await wait_for(svc, key, accepted["id"], finished)
        assert run["status"] == "cancelled"
        assert 0 < run["progress"]["done"] < 400
        assert await point_count(svc, key, "bg") == run["progress"]["done"]
        r = await svc.client.post(f"/api/runs/{accepted['id']}/cancel", headers={"X-API-Key": key})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "run_finished"


async def test_a_run_survives_a_restart_without_writing_or_billing_twice(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=8)
    items = texts(160)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        accepted = await submit(svc, key, items)
        mid = await wait_for(svc, key, accepted["id"], lambda r: r["progress"]["done"] >= 16)
        assert mid["status"] == "running"
    # The service stopped mid-run (its worker was cancelled wherever it was).
    async with running_service(settings, embedder_loader) as svc:
        run = await wait_for(svc, key, accepted["id"], finished)
        assert run["status"] == "succeeded", run
        assert run["progress"]["done"] + run["progress"]["skipped"] == 160
        assert run["progress"]["failed"] == 0
        assert await point_count(svc, key, "bg") == 160
        with svc.db.session() as session:
            billed = session.scalar(
                select(func.sum(UsageRecord.items)).where(
                    UsageRecord.run_id.like(f"{accepted['id']}:%")
                )
            )
        assert billed == run["progress"]["done"] == run["usage"]["items"]


async def test_background_contract_errors(service: Service, api_key: str) -> None:
    r = await service.run(
        api_key,
        {
            "model": MODEL,
            "mode": "search",
            "scope": "s",
            "input": {"text": "x"},
            "options": {"background": True},
        },
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "background_not_supported"
    r = await service.run(
        api_key,
        {
            "model": MODEL,
            "mode": "index",
            "scope": "s",
            "input": {"items": texts(1)},
            "options": {"background": "yes"},
        },
    )
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "options.background"


async def test_other_workspaces_cannot_see_or_cancel_a_run(service: Service, api_key: str) -> None:
    accepted = await submit(service, api_key, texts(3))
    other = service.new_key("other")
    r = await service.client.get(f"/api/runs/{accepted['id']}", headers={"X-API-Key": other})
    assert r.status_code == 404
    r = await service.client.post(
        f"/api/runs/{accepted['id']}/cancel", headers={"X-API-Key": other}
    )
    assert r.status_code == 404
    listing = await service.client.get("/api/runs", headers={"X-API-Key": other})
    assert listing.json()["count"] == 0
    await wait_for(service, api_key, accepted["id"], finished)


async def test_background_run_is_refused_up_front_without_funds(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, default_workspace_credits=0)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("poor")
        r = await svc.run(
            key,
            {
                "model": MODEL,
                "mode": "index",
                "scope": "s",
                "input": {"items": texts(5)},
                "options": {"background": True},
            },
        )
        assert r.status_code == 402
        assert r.json()["error"]["code"] == "insufficient_funds"
        listing = await svc.client.get("/api/runs", headers={"X-API-Key": key})
        assert listing.json()["count"] == 0


async def test_an_item_of_a_modality_the_model_lacks_fails_alone(
    service: Service, api_key: str
) -> None:
    """The modality rule reaches background items one by one (the gate checks a
    synchronous run's whole input; a background run's items are checked as it goes)."""
    items: list[Any] = texts(3)
    items.insert(1, {"id": "picture", "image": {"media_ref": "med_missing"}})
    accepted = await submit(service, api_key, items, scope="bg-modality")
    run = await wait_for(service, api_key, accepted["id"], finished)
    assert run["status"] == "succeeded", run
    assert run["progress"] == {"total": 4, "done": 3, "skipped": 0, "failed": 1}
    [error] = run["errors"]
    assert (error["index"], error["id"], error["code"]) == (1, "picture", "modality_not_supported")
    assert f"model {MODEL!r} does not take image inputs; it takes text" in error["message"]


async def test_a_background_item_is_checked_by_the_contract_a_synchronous_run_is(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    """One source of truth for an item's shape: the mode contract's item schema. A background
    item that breaks it fails alone, named by its position in the whole run (not in its
    chunk), with the message a synchronous run gives for the same item at that position."""
    bad: dict[int, Any] = {
        5: {"id": "typed", "text": 42},
        6: {"id": "extra", "text": "fine", "colour": "red"},
        9: {"text": "no id"},
        10: {"id": "key", "text": "fine", "metadata": {"bad key": 1}},
    }
    fields = {
        5: "input.items[5].text",
        6: "input.items[6].colour",
        9: "input.items[9].id",
        10: "input.items[10].metadata.bad key",
    }
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=4)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        items: list[Any] = texts(12)
        for pos, item in bad.items():
            items[pos] = item
        accepted = await submit(svc, key, items, scope="bg-contract")
        run = await wait_for(svc, key, accepted["id"], finished)
        assert run["status"] == "succeeded", run
        assert run["progress"] == {"total": 12, "done": 8, "skipped": 0, "failed": 4}
        errors = {e["index"]: e for e in run["errors"]}
        assert set(errors) == set(bad)
        assert all(e["code"] == "invalid_item" for e in errors.values())
        assert errors[5]["message"] == "input.items[5].text: must be a string, not an integer"
        assert errors[6]["message"] == (
            "input.items[6].colour: unknown field; input.items[6] accepts: id, text, metadata"
        )
        for pos, item in bad.items():
            assert errors[pos]["message"].startswith(fields[pos] + ": "), errors[pos]
            one_bad = texts(12)
            one_bad[pos] = item
            body = {"model": MODEL, "mode": "index", "scope": "s", "input": {"items": one_bad}}
            r = await svc.run(key, body)
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert (error["code"], error["field"]) == ("validation_error", fields[pos])
            assert error["message"] == errors[pos]["message"]
