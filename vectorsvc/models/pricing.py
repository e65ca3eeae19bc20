"""Prices as data and money as integers.

Money is counted in integer micro-credits (1 credit = 1,000,000 micro-credits) so that sums
are exact; a float never holds money. The public API shows credits as exact decimal strings.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

PriceUnit = Literal["item", "query", "request"]
PRICE_UNITS: tuple[str, ...] = get_args(PriceUnit)
MICRO_CREDITS_PER_CREDIT = 1_000_000
_CREDIT_DECIMALS = 6


class ModePrice(BaseModel):
    """What one unit of a mode costs: `unit` names the usage counter the price multiplies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: PriceUnit
    micro_credits_per_unit: int = Field(ge=0)


class Usage(BaseModel):
    """What one run consumed: items embedded, queries served, and the run itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: int = Field(default=0, ge=0)
    queries: int = Field(default=0, ge=0)
    # Every run is one request; only prices with unit `request` read it.
    requests: int = Field(default=1, ge=0)

    def units(self, unit: PriceUnit) -> int:
        if unit == "item":
            return self.items
        if unit == "query":
            return self.queries
        return self.requests


def format_credits(micro_credits: int) -> str:
    """Exact decimal credits without trailing zeros: 1_500_000 -> '1.5', 0 -> '0'."""
    sign = "-" if micro_credits < 0 else ""
    whole, frac = divmod(abs(micro_credits), MICRO_CREDITS_PER_CREDIT)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{_CREDIT_DECIMALS}d}".rstrip("0")


def parse_credits(value: str | int | Decimal) -> int:
    """Credits (e.g. '12.5') to micro-credits, exactly; at most 6 decimals, not negative."""
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of credits (e.g. 100 or 12.5)") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{value!r} must be a finite number of credits, not negative")
    micro = amount * MICRO_CREDITS_PER_CREDIT
    if micro != micro.to_integral_value():
        raise ValueError(f"{value!r} has more than {_CREDIT_DECIMALS} decimals")
    return int(micro)
