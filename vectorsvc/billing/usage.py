"""The usage summary: a workspace's usage records summed over a period, by model, mode or day.

Platform work (a release migration's re-embedding, run ids `PLATFORM_RUN_PREFIX...`) is
free and not the workspace's usage: it is counted apart, as `platform_runs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Label, SQLColumnExpression, func, select
from sqlalchemy.orm import Session

from vectorsvc.billing.service import _aware, _transaction
from vectorsvc.db.database import Database
from vectorsvc.db.tables import UsageRecord
from vectorsvc.errors import ValidationFailed

GroupBy = Literal["model", "mode", "day"]
GROUP_BY_VALUES: tuple[str, ...] = get_args(GroupBy)


@dataclass(frozen=True)
class UsageRow:
    key: str | None
    runs: int
    items: int
    queries: int
    cost: int


@dataclass(frozen=True)
class SummaryQuery:
    start: datetime | None  # inclusive
    end: datetime | None  # exclusive
    group_by: GroupBy


def parse_summary_query(
    *, start: str | None, end: str | None, group_by: str | None
) -> SummaryQuery:
    """`from`/`to` as ISO dates or date-times (a date-only `to` includes that whole day;
    a date-time without offset is UTC); `group_by` one of model, mode, day."""
    begin = _parse_instant(start, field="from", end_of_day=False)
    finish = _parse_instant(end, field="to", end_of_day=True)
    if begin is not None and finish is not None and finish <= begin:
        raise ValidationFailed("to must be later than from", field="to", code="invalid_period")
    chosen = group_by or "model"
    if chosen not in GROUP_BY_VALUES:
        raise ValidationFailed(
            f"group_by {chosen!r} is not allowed; use one of: {', '.join(GROUP_BY_VALUES)}",
            field="group_by",
            code="invalid_group_by",
            details={"allowed": list(GROUP_BY_VALUES)},
        )
    return SummaryQuery(start=begin, end=finish, group_by=chosen)  # type: ignore[arg-type]


# Run ids of platform work: never charged, left out of a workspace's usage (`runs.intents`
# writes them for a release migration's re-embedding).
PLATFORM_RUN_PREFIX = "reembed_"


def usage_summary(
    db: Database | Session, *, workspace_id: str, query: SummaryQuery
) -> tuple[UsageRow, list[UsageRow], int]:
    """Totals and per-group sums of the workspace's usage records in the period, and how
    many free platform runs (re-embedding into a new model release) it left out."""
    conditions: list[ColumnElement[bool]] = [UsageRecord.workspace_id == workspace_id]
    if query.start is not None:
        conditions.append(UsageRecord.created_at >= query.start)
    if query.end is not None:
        conditions.append(UsageRecord.created_at < query.end)
    # Platform work (re-embedding into a new model release) is free and not the workspace's
    # usage: counted apart (`platform_runs`).
    platform = UsageRecord.run_id.like(f"{PLATFORM_RUN_PREFIX}%")
    conditions.append(~platform)
    sums = (
        func.count(UsageRecord.id),
        func.coalesce(func.sum(UsageRecord.items), 0),
        func.coalesce(func.sum(UsageRecord.queries), 0),
        func.coalesce(func.sum(UsageRecord.cost), 0),
    )
    with _transaction(db) as session:
        total = session.execute(select(*sums).where(*conditions)).one()
        platform_runs = session.scalar(
            select(func.count(UsageRecord.id)).where(*conditions[:-1], platform)
        )
        # Grouped by the label: an expression repeated with bound parameters (the day on
        # PostgreSQL) would not be seen as the same expression by a server-side-binding driver.
        key: Label[Any] = _group_key(session, query.group_by).label("group_key")
        groups = session.execute(
            select(key, *sums).where(*conditions).group_by("group_key").order_by("group_key")
        ).all()
    return (
        UsageRow(None, *(int(v) for v in total)),
        [UsageRow(str(g[0]), *(int(v) for v in g[1:])) for g in groups],
        int(platform_runs or 0),
    )


def _parse_instant(value: str | None, *, field: str, end_of_day: bool) -> datetime | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if end_of_day:
                day += timedelta(days=1)
            return datetime.combine(day, time(), tzinfo=UTC)
        instant = datetime.fromisoformat(text)
        return _aware(instant).astimezone(UTC)
    except ValueError:
        raise ValidationFailed(
            f"{field}: {value!r} is not an ISO 8601 date (2026-01-31) or date-time "
            "(2026-01-31T12:00:00Z)",
            field=field,
            code="invalid_date",
        ) from None
    except OverflowError:  # the day after 9999-12-31, or an offset that leaves years 1-9999
        raise ValidationFailed(
            f"{field}: {value!r} is out of range: dates and date-times must fall within "
            "years 1 to 9999 in UTC (a date-only 'to' at most 9999-12-30)",
            field=field,
            code="invalid_date",
        ) from None


def _group_key(session: Session, group_by: GroupBy) -> SQLColumnExpression[Any]:
    if group_by == "model":
        return UsageRecord.model
    if group_by == "mode":
        return UsageRecord.mode
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", UsageRecord.created_at), "YYYY-MM-DD")
    # SQLite stores UTC date-times as 'YYYY-MM-DD HH:MM:SS...' text.
    return func.substr(UsageRecord.created_at, 1, 10)
