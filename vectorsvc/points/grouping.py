"""Search hits per item: candidates (chunks, best first) collapsed to one hit per item.

Kept apart from how candidates are produced (a dense search here; a keyword or hybrid
retrieval produces ranked lists the same way): `group_by_item` takes any ranked candidate
list, `search_items` asks a candidate source for more until it has `top_k` items or the
source runs dry.

An item scores as its best chunk; the hit carries that chunk's text and its span in the
item's text as the highlight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from vectorsvc.points import namespaces
from vectorsvc.points.chunks import read_chunk
from vectorsvc.points.payload import hit_public
from vectorsvc.vectorstore.base import ScoredPoint

# Candidates fetched per item asked for at first (each retry asks 4 times more), and at most
# (each carries its payload: a bound on what one search reads, whoever dominates the scope).
OVERFETCH = 4
MAX_CANDIDATES = 1024


def item_key(point: ScoredPoint) -> object:
    """What identifies a candidate's item: the client id it carries (else the point id)."""
    item_id = point.payload.get(namespaces.ID_FIELD)
    return item_id if isinstance(item_id, str) else ("point", point.id)


def group_by_item(candidates: Iterable[ScoredPoint], limit: int) -> list[ScoredPoint]:
    """The first (best) candidate of each item, in the candidates' order, `limit` at most."""
    seen: set[object] = set()
    best: list[ScoredPoint] = []
    for point in candidates:
        key = item_key(point)
        if key in seen:
            continue
        seen.add(key)
        best.append(point)
        if len(best) == limit:
            break
    return best


def search_items(
    fetch: Callable[[int], list[ScoredPoint]], top_k: int, *, max_candidates: int = MAX_CANDIDATES
) -> list[ScoredPoint]:
    """The best chunk of each of the `top_k` best items. `fetch(n)` returns the `n` best
    candidates; it is asked again for 4 times as many while the candidates hold fewer than
    `top_k` items and it had more to give (up to `max_candidates`)."""
    limit = min(max(top_k * OVERFETCH, top_k), max(max_candidates, top_k))
    while True:
        candidates = fetch(limit)
        hits = group_by_item(candidates, top_k)
        if len(hits) >= top_k or len(candidates) < limit or limit >= max_candidates:
            return hits
        limit = min(limit * OVERFETCH, max(max_candidates, top_k))


def item_hit_public(hit: ScoredPoint) -> dict[str, Any]:
    """A hit as a run's output shows it: the item, scored by its best chunk, whose text and
    character span in the item's text are the highlight (text items only)."""
    out = hit_public(hit)
    chunk = read_chunk(hit.payload)
    if chunk.text is not None:
        out["highlight"] = {"text": chunk.text, "start": chunk.start, "end": chunk.end}
    return out
