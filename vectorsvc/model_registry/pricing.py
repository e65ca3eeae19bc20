"""Prices as data: what one unit of a mode costs, and what one run consumed.

Prices are integer micro-credits (`vectorsvc.billing.money` counts and formats them).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

PriceUnit = Literal["item", "chunk", "query", "request"]
PRICE_UNITS: tuple[str, ...] = get_args(PriceUnit)


class ModePrice(BaseModel):
    """What one unit of a mode costs: `unit` names the usage counter the price multiplies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: PriceUnit
    micro_credits_per_unit: int = Field(ge=0)


class Usage(BaseModel):
    """What one run consumed: items embedded, queries served, and the run itself. An index
    run's `items` are the text chunks it embedded (`runs.chunking`): a long text is several."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: int = Field(default=0, ge=0)
    queries: int = Field(default=0, ge=0)
    # Every run is one request; only prices with unit `request` read it.
    requests: int = Field(default=1, ge=0)

    def units(self, unit: PriceUnit) -> int:
        if unit in ("item", "chunk"):  # "chunk": an index price per text chunk embedded
            return self.items
        if unit == "query":
            return self.queries
        return self.requests
