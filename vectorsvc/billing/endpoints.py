"""Billing endpoints: the caller's workspace wallet and usage, nothing else."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio
from fastapi import APIRouter, Query

from vectorsvc.auth.dependencies import CurrentCaller
from vectorsvc.billing import service, usage
from vectorsvc.billing.money import format_credits
from vectorsvc.billing.schemas import UsageGroup, UsageSummaryPublic, UsageTotals, WalletPublic
from vectorsvc.errors import ERROR_RESPONSES
from vectorsvc.json_body import JSONRoute
from vectorsvc.state import StateDep

router = APIRouter(
    prefix="/api/billing", tags=["billing"], responses=ERROR_RESPONSES, route_class=JSONRoute
)


@router.get("/wallet", response_model=WalletPublic, summary="The workspace's wallet")
async def get_wallet(caller: CurrentCaller, state: StateDep) -> WalletPublic:
    await state.funds.flush()  # query charges are written in batches: include them
    wallet = await anyio.to_thread.run_sync(
        partial(
            service.get_wallet,
            state.db,
            workspace_id=caller.workspace_id,
            opening_micro_credits=service.opening_micro_credits(state.settings),
        )
    )
    return WalletPublic(
        workspace_id=wallet.workspace_id,
        balance=format_credits(wallet.balance),
        balance_micro_credits=wallet.balance,
        updated_at=wallet.updated_at,
    )


@router.get(
    "/usage/summary",
    response_model=UsageSummaryPublic,
    summary="Usage and cost of the workspace's runs, grouped by model, mode or day",
)
async def usage_summary(
    caller: CurrentCaller,
    state: StateDep,
    start: Annotated[
        str | None,
        Query(alias="from", max_length=64, description="ISO date or date-time, inclusive"),
    ] = None,
    end: Annotated[
        str | None,
        Query(
            alias="to",
            max_length=64,
            description="ISO date (that whole day included) or date-time (exclusive)",
        ),
    ] = None,
    group_by: Annotated[str | None, Query(max_length=16, description="model, mode or day")] = None,
) -> UsageSummaryPublic:
    query = usage.parse_summary_query(start=start, end=end, group_by=group_by)
    await state.funds.flush()
    totals, groups, platform_runs = await anyio.to_thread.run_sync(
        partial(usage.usage_summary, state.db, workspace_id=caller.workspace_id, query=query)
    )
    return UsageSummaryPublic(
        workspace_id=caller.workspace_id,
        from_=query.start,
        to=query.end,
        group_by=query.group_by,
        totals=_totals(totals),
        groups=[UsageGroup(key=g.key or "", **_totals(g).model_dump()) for g in groups],
        platform_runs=platform_runs,
    )


def _totals(row: usage.UsageRow) -> UsageTotals:
    return UsageTotals(
        runs=row.runs,
        items=row.items,
        queries=row.queries,
        cost=format_credits(row.cost),
        cost_micro_credits=row.cost,
    )
