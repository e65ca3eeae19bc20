"""Billing API shapes. Money is shown twice: `balance`/`cost` as exact decimal strings of
credits (no float rounding), and the same amounts as integer micro-credits."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WalletPublic(BaseModel):
    workspace_id: str
    balance: str = Field(description="Credits, as an exact decimal string, e.g. '999.9986'.")
    balance_micro_credits: int = Field(description="The same balance; 1 credit = 1,000,000.")
    currency: Literal["credits"] = "credits"
    updated_at: datetime


class UsageTotals(BaseModel):
    runs: int
    items: int = Field(description="Items embedded (execute and index).")
    queries: int = Field(description="Queries served (search).")
    cost: str = Field(description="Credits, as an exact decimal string.")
    cost_micro_credits: int


class UsageGroup(UsageTotals):
    key: str = Field(description="The model slug, the mode, or the UTC day (YYYY-MM-DD).")


class UsageSummaryPublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    workspace_id: str
    from_: datetime | None = Field(alias="from", description="Inclusive; null: no lower bound.")
    to: datetime | None = Field(description="Exclusive; null: up to now.")
    group_by: Literal["model", "mode", "day"]
    currency: Literal["credits"] = "credits"
    totals: UsageTotals
    groups: list[UsageGroup]
    platform_runs: int = Field(
        default=0,
        description="Free platform work on the workspace's data in the period, left out of "
        "the totals: chunks of re-embedding into a new model release (never charged).",
    )
