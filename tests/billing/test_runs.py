"""Billing through POST /api/runs: 402 before any work, exact debits, failed runs free."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from embedders.base import Embedder
from tests.conftest import Service, make_settings, running_service
from vectorsvc.billing import service as billing
from vectorsvc.config import Settings
from vectorsvc.models.registry import ModelSpec
from vectorsvc.workspaces.service import find_workspace

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return make_settings(tmp_path / "data", models_dir, default_workspace_credits=0)


@pytest.fixture
async def service(settings: Settings, embedder_loader: Callable[[ModelSpec], Embedder]) -> Any:
    async with running_service(settings, embedder_loader) as svc:
        yield svc


def fund(service: Service, name: str, micro_credits: int) -> str:
    with service.db.session() as session:
        workspace = find_workspace(session, name=name)
        assert workspace is not None
        workspace_id = workspace.id
    billing.top_up(service.db, workspace_id=workspace_id, micro_credits=micro_credits)
    return workspace_id


def index_body(n: int, scope: str = "docs") -> dict[str, Any]:
    items = [{"id": f"doc-{i}", "text": f"document number {i}"} for i in range(n)]
    return {"model": MODEL, "mode": "index", "scope": scope, "input": {"items": items}}


async def wallet(service: Service, key: str) -> int:
    r = await service.client.get("/api/billing/wallet", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return int(r.json()["balance_micro_credits"])


async def summary(service: Service, key: str) -> Any:
    r = await service.client.get("/api/billing/usage/summary", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_run_the_wallet_cannot_cover_is_refused_before_any_work(
    service: Service,
) -> None:
    key = service.new_key("poor")
    fund(service, "poor", 2 * 200 + 199)  # covers 2 indexed items, not 3
    r = await service.run(key, index_body(3))
    assert r.status_code == 402, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_funds"
    assert "0.0006" in error["message"] and "0.000599" in error["message"]
    # Nothing was indexed, recorded or debited.
    kbs = await service.client.get("/api/knowledge-bases", headers={"X-API-Key": key})
    assert kbs.json()["count"] == 0
    assert (await summary(service, key))["totals"]["runs"] == 0
    assert await wallet(service, key) == 599


async def test_a_run_debits_its_quoted_cost_and_a_failed_run_costs_nothing(
    service: Service,
) -> None:
    key = service.new_key("acme")
    fund(service, "acme", 10_000)
    r = await service.run(key, index_body(3))
    assert r.status_code == 200, r.text
    search = {"model": MODEL, "mode": "search", "scope": "docs", "input": {"text": "number"}}
    assert (await service.run(key, search)).status_code == 200
    assert await wallet(service, key) == 10_000 - 3 * 200 - 100
    bad = await service.run(key, {**search, "params": {"top_k": 0}})
    assert bad.status_code == 422
    assert await wallet(service, key) == 10_000 - 700
    totals = (await summary(service, key))["totals"]
    assert (totals["runs"], totals["items"], totals["queries"]) == (2, 3, 1)
    assert totals["cost_micro_credits"] == 700


async def test_concurrent_runs_never_overdraw_and_every_debit_is_recorded(
    service: Service,
) -> None:
    key = service.new_key("acme")
    fund(service, "acme", 4 * 100 + 50)  # four searches
    search = {"model": MODEL, "mode": "search", "scope": "docs", "input": {"text": "q"}}
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await service.run(key, search)).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert statuses.count(200) == 4
    assert statuses.count(402) == 6
    totals = (await summary(service, key))["totals"]
    assert totals["runs"] == 4 and totals["cost_micro_credits"] == 400
    assert await wallet(service, key) == 50
