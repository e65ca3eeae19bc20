"""Query charges are written after the response, in batches, and stay exact.

Searches reserve their cost before any work and the flusher writes the charges in batches,
up to a second later (`vectorsvc.billing.funds`). These tests run the real service and read
the database directly, as an auditor would, to check that nothing is lost, nothing is
charged twice, and no wallet is overdrawn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from embedders.base import Embedder
from tests.billing.test_ledger import assert_ledger_consistent, usage_cost
from tests.billing.test_runs import fund, index_body, wallet
from tests.conftest import Service, make_settings, running_service
from vectorsvc.billing import service as billing
from vectorsvc.config import Settings
from vectorsvc.models.registry import ModelSpec

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
SEARCH = {"model": MODEL, "mode": "search", "scope": "docs", "input": {"text": "number"}}
SEARCH_COST = 100  # micro-credits per query (models.yaml)
ITEM_COST = 200  # per indexed item


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return make_settings(tmp_path / "data", models_dir, default_workspace_credits=0)


@pytest.fixture
async def service(settings: Settings, embedder_loader: Callable[[ModelSpec], Embedder]) -> Any:
    async with running_service(settings, embedder_loader) as svc:
        yield svc


async def stored_balance_reaches(service: Service, workspace_id: str, expected: int) -> int:
    """Poll the database (not the API, which flushes first) until the flusher has written."""
    deadline = time.monotonic() + 10
    while True:
        balance = billing.current_balance(service.db, workspace_id=workspace_id)
        if balance == expected or time.monotonic() > deadline:
            return balance
        await anyio.sleep(0.02)


async def test_the_flusher_writes_search_charges_on_its_own(service: Service) -> None:
    key = service.new_key("acme")
    workspace_id = fund(service, "acme", 10_000)
    for _ in range(3):
        r = await service.run(key, SEARCH)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["cost"] == "0.0001"
    assert await stored_balance_reaches(service, workspace_id, 10_000 - 3 * SEARCH_COST) == (
        10_000 - 3 * SEARCH_COST
    )
    assert usage_cost(service.db, workspace_id) == 3 * SEARCH_COST
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
    key = service.new_key("acme")
    fund(service, "acme", SEARCH_COST)  # exactly one search
    bad = {**SEARCH, "input": {"image": {"media_ref": "med_" + "0" * 32}}}
    r = await service.run(key, bad)
    assert r.status_code in (404, 422), r.text
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


async def test_shutting_down_writes_pending_charges(
    settings: Settings, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = settings.model_copy(update={"charge_flush_ms": 10_000.0})  # never on its own
    async with running_service(settings, embedder_loader) as service:
        key = service.new_key("acme")
        workspace_id = fund(service, "acme", 10_000)
        for _ in range(4):
            assert (await service.run(key, SEARCH)).status_code == 200
        assert usage_cost(service.db, workspace_id) == 0  # not written yet
    assert usage_cost(service.db, workspace_id) == 4 * SEARCH_COST
    assert billing.current_balance(service.db, workspace_id=workspace_id) == 10_000 - 400
    assert_ledger_consistent(service.db, workspace_id)
