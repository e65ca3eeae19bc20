"""One hit per item from ranked chunk candidates, whatever produced them."""

from __future__ import annotations

from vectorsvc.points.grouping import group_by_item, item_hit_public, search_items
from vectorsvc.vectorstore.base import ScoredPoint


def chunk(point: int, item: str, score: float, n: int = 0) -> ScoredPoint:
    text = f"{item} chunk {n}"
    payload = {"id": item, "text": text, "metadata": {}, "_chunk": n, "_start": 100 * n}
    payload["_end"] = 100 * n + len(text)
    return ScoredPoint(id=f"p{point}", score=score, payload=payload)


def ranked(items: list[str]) -> list[ScoredPoint]:
    return [chunk(i, item, 1.0 - i / 1000, n=i) for i, item in enumerate(items)]


def test_each_item_keeps_its_best_chunk_in_rank_order() -> None:
    candidates = ranked(["a", "a", "b", "a", "c", "b"])
    best = group_by_item(candidates, 10)
    assert [(p.payload["id"], p.id) for p in best] == [("a", "p0"), ("b", "p2"), ("c", "p4")]
    assert [p.payload["id"] for p in group_by_item(candidates, 2)] == ["a", "b"]


def test_fetches_more_while_one_item_fills_the_candidates() -> None:
    order = ["a"] * 300 + ["b", "c"]
    asked: list[int] = []

    def fetch(limit: int) -> list[ScoredPoint]:
        asked.append(limit)
        return ranked(order)[:limit]

    hits = search_items(fetch, 3)
    assert [h.payload["id"] for h in hits] == ["a", "b", "c"]
    assert asked == [12, 48, 192, 768]


def test_stops_when_the_source_runs_dry_or_at_the_cap() -> None:
    asked: list[int] = []

    def fetch(limit: int) -> list[ScoredPoint]:
        asked.append(limit)
        return ranked(["a"] * 5000)[:limit]

    assert [h.payload["id"] for h in search_items(fetch, 10, max_candidates=200)] == ["a"]
    assert asked == [40, 160, 200]
    asked.clear()
    assert len(search_items(lambda n: ranked(["a", "b"])[:n], 10)) == 2


def test_a_hit_carries_its_best_chunk_as_highlight() -> None:
    out = item_hit_public(chunk(7, "doc", 0.5, n=3))
    assert out["id"] == "doc" and out["score"] == 0.5
    assert out["highlight"] == {"text": "doc chunk 3", "start": 300, "end": 311}
    legacy = ScoredPoint(id="p", score=0.1, payload={"id": "old", "text": "whole text"})
    assert item_hit_public(legacy)["highlight"] == {"text": "whole text", "start": 0, "end": 10}
