"""Qdrant Edge stores a payload nested past 128 levels but cannot read it back: every read
that touches such a point is answered anyway (the point gets a stand-in payload from the
keyword indexes), deletes work, and the repair survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vectorsvc.vectorstore.base import (
    CollectionSpec,
    Filter,
    HasIds,
    MatchValue,
    PointRecord,
    Range,
)
from vectorsvc.vectorstore.edge import EdgeVectorStore
from vectorsvc.vectorstore.edge.payloads import UNREADABLE_FIELD

SPEC = CollectionSpec(
    name="docs", dimension=4, tenant_key="_tenant", keyword_fields=("_scope", "id")
)
TENANT = Filter(must=(MatchValue(key="_tenant", value="t"),))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def point(number: int, metadata: dict[str, Any], tenant: str = "t") -> PointRecord:
    vector = np.zeros(SPEC.dimension, dtype=np.float32)
    vector[number % SPEC.dimension] = 1.0
    return PointRecord(
        id=f"00000000-0000-0000-0000-{number:012d}",
        vector=vector,
        payload={"_tenant": tenant, "_scope": "s", "id": f"item-{number}", "metadata": metadata},
    )


def _seed(store: EdgeVectorStore) -> list[PointRecord]:
    store.ensure_collection(SPEC)
    points = [point(i, {"n": i}) for i in range(40)]
    points[7] = point(7, nested(200))
    points[23] = point(23, {"n": 23, "deep": nested(150)})
    points.append(point(99, nested(300), tenant="other"))
    store.upsert("docs", points)
    return points


def test_reads_of_a_collection_with_unreadable_payloads_are_answered(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path) as store:
        _seed(store)
        # A filter on a field without an index reads payloads: it panicked in the engine.
        in_range = TENANT.and_(Range(key="metadata.n", gte=10, lt=30))
        assert store.count("docs", filter=in_range) == 19  # 10..29, less the unreadable 23
        stand_in = store.retrieve("docs", ["00000000-0000-0000-0000-000000000023"])[0]
        assert stand_in.payload == {
            "_tenant": "t",
            "_scope": "s",
            "id": "item-23",
            UNREADABLE_FIELD: stand_in.payload[UNREADABLE_FIELD],
        }
        hits = store.search("docs", np.ones(4, dtype=np.float32), filter=TENANT, limit=100)
        assert len(hits) == 40
        by_id = {h.payload["id"]: h.payload for h in hits}
        assert UNREADABLE_FIELD in by_id["item-7"]
        assert by_id["item-8"]["metadata"] == {"n": 8}
        page = store.scroll("docs", filter=TENANT, limit=100)
        assert len(page.points) == 40
        # The other tenant's point is repaired when a read of its own reaches it.
        other = Filter(must=(MatchValue(key="_tenant", value="other"),))
        assert store.facet("docs", "id", filter=other, limit=5) == {"item-99": 1}
        assert store.scroll("docs", filter=other, limit=5).points[0].payload["id"] == "item-99"


def test_deletes_remove_unreadable_points_and_the_repair_survives_a_restart(
    tmp_path: Path,
) -> None:
    with EdgeVectorStore(tmp_path) as store:
        _seed(store)
        only_7 = TENANT.and_(HasIds(("00000000-0000-0000-0000-000000000007",)))
        assert store.delete("docs", filter=only_7) == 1
        assert store.count("docs", filter=TENANT) == 39
    with EdgeVectorStore(tmp_path) as store:
        assert store.count("docs", filter=TENANT) == 39
        hits = store.search("docs", np.ones(4, dtype=np.float32), filter=TENANT, limit=100)
        assert len(hits) == 39
        assert store.delete("docs", filter=TENANT) == 39
        assert store.delete("docs", filter=Filter()) == 1  # the other tenant's point
    with EdgeVectorStore(tmp_path) as store:
        assert store.count("docs", filter=Filter()) == 0
