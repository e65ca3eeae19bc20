"""Billing API: the caller's wallet, and its usage summed by model, mode or day."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from tests.harness import Service
from vectorsvc.billing import service as billing
from vectorsvc.db.tables import UsageRecord
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelRegistry
from vectorsvc.workspaces.service import find_workspace

pytestmark = pytest.mark.anyio

MINILM = ModelRegistry.from_file().get("all-minilm-l6-v2")


def workspace_id(service: Service, name: str) -> str:
    with service.db.session() as session:
        workspace = find_workspace(session, name=name)
        assert workspace is not None
        return workspace.id


async def get(service: Service, key: str, path: str, status: int = 200, /, **params: Any) -> Any:
    r = await service.client.get(path, params=params, headers={"X-API-Key": key})
    assert r.status_code == status, r.text
    return r.json()


async def test_a_new_workspace_wallet_opens_with_the_default_credits(
    service: Service, api_key: str
) -> None:
    wallet = await get(service, api_key, "/api/billing/wallet")
    assert wallet["workspace_id"] == workspace_id(service, "acme")
    assert wallet["currency"] == "credits"
    assert wallet["balance"] == "1000000"  # tests' VECTORSVC_DEFAULT_WORKSPACE_CREDITS
    assert wallet["balance_micro_credits"] == 1_000_000 * 1_000_000
    assert wallet["updated_at"]


async def test_wallet_shows_charges_exactly(service: Service, api_key: str) -> None:
    ws = workspace_id(service, "acme")
    opening = billing.opening_micro_credits(service.settings)
    billing.charge(
        service.db,
        workspace_id=ws,
        run_id="run_1",
        spec=MINILM,
        mode="index",
        units=Usage(items=7),
        opening_micro_credits=opening,
    )
    wallet = await get(service, api_key, "/api/billing/wallet")
    assert wallet["balance"] == "999999.9986"
    assert wallet["balance_micro_credits"] == opening - 1400


async def test_each_workspace_sees_only_its_own_wallet_and_usage(
    service: Service, api_key: str
) -> None:
    other = service.new_key("other")
    billing.charge(
        service.db,
        workspace_id=workspace_id(service, "other"),
        run_id="run_other",
        spec=MINILM,
        mode="search",
        units=Usage(queries=1),
        opening_micro_credits=10_000,
    )
    assert (await get(service, other, "/api/billing/wallet"))["balance"] == "0.0099"
    assert (await get(service, api_key, "/api/billing/usage/summary"))["totals"]["runs"] == 0


async def seed_usage(service: Service) -> str:
    """Five runs of the acme workspace over two days: 3 index, 1 search, 1 delete."""
    ws = workspace_id(service, "acme")
    runs = [
        ("r1", "index", Usage(items=7), datetime(2026, 3, 1, 9, tzinfo=UTC)),
        ("r2", "index", Usage(items=3), datetime(2026, 3, 1, 23, 59, tzinfo=UTC)),
        ("r3", "search", Usage(queries=1), datetime(2026, 3, 2, 0, 0, tzinfo=UTC)),
        ("r4", "delete", Usage(), datetime(2026, 3, 2, 8, tzinfo=UTC)),
        ("r5", "index", Usage(items=1), datetime(2026, 3, 2, 12, tzinfo=UTC)),
    ]
    for run_id, mode, units, when in runs:
        billing.charge(
            service.db,
            workspace_id=ws,
            run_id=run_id,
            spec=MINILM,
            mode=mode,
            units=units,
            opening_micro_credits=10**9,
        )
        with service.db.session() as session:  # back-date the record
            session.execute(
                update(UsageRecord).where(UsageRecord.run_id == run_id).values(created_at=when)
            )
    return ws


async def test_summary_groups_by_model_mode_and_day(service: Service, api_key: str) -> None:
    await seed_usage(service)
    path = "/api/billing/usage/summary"
    by_model = await get(service, api_key, path)
    assert by_model["group_by"] == "model"
    assert by_model["totals"] == {
        "runs": 5,
        "items": 11,
        "queries": 1,
        "cost": "0.0023",
        "cost_micro_credits": 11 * 200 + 100,
    }
    assert [(g["key"], g["runs"]) for g in by_model["groups"]] == [("all-minilm-l6-v2", 5)]

    by_mode = await get(service, api_key, path, group_by="mode")
    assert {g["key"]: g["cost_micro_credits"] for g in by_mode["groups"]} == {
        "delete": 0,
        "index": 2200,
        "search": 100,
    }

    by_day = await get(service, api_key, path, group_by="day")
    assert [(g["key"], g["runs"], g["items"]) for g in by_day["groups"]] == [
        ("2026-03-01", 2, 10),
        ("2026-03-02", 3, 1),
    ]
    assert sum(g["cost_micro_credits"] for g in by_day["groups"]) == 2300


async def test_summary_period_bounds(service: Service, api_key: str) -> None:
    await seed_usage(service)
    path = "/api/billing/usage/summary"
    # A date-only `to` includes that whole day.
    day1 = await get(service, api_key, path, **{"from": "2026-03-01", "to": "2026-03-01"})
    assert day1["totals"]["runs"] == 2
    assert day1["from"].startswith("2026-03-01T00:00:00")
    assert day1["to"].startswith("2026-03-02T00:00:00")
    # Date-times: `from` inclusive, `to` exclusive; an offset is honoured.
    window = await get(
        service,
        api_key,
        path,
        **{"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T11:00:00+02:00"},
    )
    assert window["totals"]["runs"] == 2  # r3 (00:00) and r4 (08:00 UTC) < 09:00 UTC; not r5
    assert (await get(service, api_key, path, **{"from": "2026-03-03"}))["totals"]["runs"] == 0


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"group_by": "week"}, "group_by", "invalid_group_by"),
        ({"from": "yesterday"}, "from", "invalid_date"),
        ({"to": "2026-13-01"}, "to", "invalid_date"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "to", "invalid_period"),
    ],
)
async def test_summary_rejects_bad_parameters(
    service: Service, api_key: str, params: dict[str, str], field: str, code: str
) -> None:
    body = await get(service, api_key, "/api/billing/usage/summary", 422, **params)
    assert body["error"]["field"] == field
    assert body["error"]["code"] == code
    if field == "group_by":
        assert body["error"]["details"]["allowed"] == ["model", "mode", "day"]
        assert "model, mode, day" in body["error"]["message"]


@pytest.mark.parametrize("path", ["/api/billing/wallet", "/api/billing/usage/summary"])
async def test_billing_needs_credentials(service: Service, path: str) -> None:
    r = await service.client.get(path)
    assert r.status_code == 401
