"""Money as integers: micro-credits, and the exact decimal strings the API shows.

Money is counted in integer micro-credits (1 credit = 1,000,000 micro-credits) so that sums
are exact; a float never holds money. The public API shows credits as exact decimal strings.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO_CREDITS_PER_CREDIT = 1_000_000
_CREDIT_DECIMALS = 6


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
