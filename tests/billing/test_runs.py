"""Billing through POST /api/runs: 402 before any work, exact debits, failed runs free, and
query charges written after the response without losing or doubling any."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from embedders.base import Embedder
from tests.billing.test_ledger import assert_ledger_consistent, usage_cost
from tests.harness import Service, make_settings, running_service
from vectorsvc.billing import service as billing
from vectorsvc.config import Settings
from vectorsvc.model_registry.registry import ModelSpec
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


# --- Query charges are written before the answer (`vectorsvc.billing.funds`): searches
# reserve their cost in the database before any work and answer once their charge is
# stored. These tests read the database directly, as an auditor would: nothing lost,
# nothing charged twice, no wallet overdrawn.

SEARCH = {"model": MODEL, "mode": "search", "scope": "docs", "input": {"text": "number"}}
SEARCH_COST = 100  # micro-credits per query (models.yaml)
ITEM_COST = 200  # per indexed item


async def test_a_search_is_billed_before_it_answers(service: Service) -> None:
    key = service.new_key("acme")
    workspace_id = fund(service, "acme", 10_000)
    for n in range(1, 4):
        r = await service.run(key, SEARCH)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["cost"] == "0.0001"
        # Read at once, past the API: a crash now would lose nothing.
        assert usage_cost(service.db, workspace_id) == n * SEARCH_COST
        assert billing.current_balance(service.db, workspace_id=workspace_id) == (
            10_000 - n * SEARCH_COST
        )
    assert_ledger_consistent(service.db, workspace_id)


async def test_searches_and_index_runs_together_never_overdraw(service: Service) -> None:
    # 2,000 micro-credits: e.g. one 5-item index run (1,000) and ten searches (1,000).
    key = service.new_key("acme")
    workspace_id = fund(service, "acme", 2_000)
    outcomes: list[tuple[str, int]] = []

    async def search() -> None:
        outcomes.append(("search", (await service.run(key, SEARCH)).status_code))

    async def index(n: int) -> None:
        body = index_body(5, scope=f"s{n}")
        outcomes.append(("index", (await service.run(key, body)).status_code))

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(search)
            if n % 6 == 0:
                tg.start_soon(index, n)
    assert {status for _, status in outcomes} <= {200, 402}
    spent = sum(
        SEARCH_COST if kind == "search" else 5 * ITEM_COST
        for kind, status in outcomes
        if status == 200
    )
    assert 0 < spent <= 2_000
    assert 2_000 - spent < SEARCH_COST  # refusals only once the money had run out
    assert await wallet(service, key) == 2_000 - spent
    assert usage_cost(service.db, workspace_id) == spent
    assert_ledger_consistent(service.db, workspace_id)


async def test_a_failed_search_gives_its_reservation_back(service: Service) -> None:
    # Funds for one image search (500) or five text searches (100 each). The image search
    # reserves its 500, then fails on its unknown media ref: if the reservation stayed,
    # the text searches would be refused.
    key = service.new_key("acme")
    fund(service, "acme", 500)
    bad = {
        "model": "image-similarity",
        "mode": "search",
        "scope": "photos",
        "input": {"image": {"media_ref": "med_" + "0" * 32}},
    }
    r = await service.run(key, bad)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "media_not_found"
    for _ in range(5):
        r = await service.run(key, SEARCH)
        assert r.status_code == 200, r.text
    r = await service.run(key, SEARCH)
    assert r.status_code == 402, r.text
    assert await wallet(service, key) == 0


async def test_a_top_up_from_another_process_is_seen_at_once(service: Service) -> None:
    key = service.new_key("acme")
    workspace_id = fund(service, "acme", SEARCH_COST)
    assert (await service.run(key, SEARCH)).status_code == 200
    r = await service.run(key, SEARCH)
    assert r.status_code == 402  # the balance is remembered as spent
    billing.top_up(service.db, workspace_id=workspace_id, micro_credits=SEARCH_COST)  # the CLI
    r = await service.run(key, SEARCH)
    assert r.status_code == 200, r.text  # a refusal re-reads the wallet first


async def test_an_execute_run_is_billed_before_it_answers(service: Service) -> None:
    key = service.new_key("acme")
    workspace_id = fund(service, "acme", 10_000)
    body = {"model": MODEL, "mode": "execute", "input": {"texts": ["a", "b"]}}
    r = await service.run(key, body)
    assert r.status_code == 200, r.text
    assert usage_cost(service.db, workspace_id) == 2 * 100  # 100 per execute item
    assert_ledger_consistent(service.db, workspace_id)
