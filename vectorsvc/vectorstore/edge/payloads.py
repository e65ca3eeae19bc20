"""Stored payloads that Qdrant Edge cannot read back, found and replaced.

Edge writes any payload it is given, but reads payloads with serde_json's recursion limit
(128 levels): a payload nested deeper is stored, then every read that touches it fails (a
search or scroll that returns it, a filter on a field that is not indexed, which panics,
and a delete, which reads the payload it removes). The service's contract now refuses
such payloads; this module makes a collection that already holds one readable again.

`find_unreadable` reads the payloads of the points a filter's indexed conditions select
(those conditions are answered from the keyword indexes, never from payloads) and bisects
a failing page down to the points at fault. `stand_in_payload` rebuilds what the indexes
still know of such a point (its tenant, workspace, scope and client id) and marks it with
`UNREADABLE_FIELD`; the caller writes it over the unreadable payload (an overwrite does not
read the old payload), so the point can be listed, searched and deleted again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import qdrant_edge as qe

from vectorsvc.vectorstore.base import CollectionSpec, Filter, HasIds, MatchAny, MatchValue

# Set on a stand-in payload: what the point held could not be read, and was replaced.
UNREADABLE_FIELD = "_unreadable"
UNREADABLE_NOTE = "the stored payload could not be read back and was replaced"
_PAGE = 512
_SIGNATURES = ("Failed to deserialize payload", "Payload storage is corrupted")


def is_unreadable_payload(exc: BaseException) -> bool:
    """Whether `exc` is Edge failing to decode a stored payload: a plain exception from a
    read, or a Rust panic (pyo3's PanicException, a BaseException) from a filter check."""
    if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
        return False
    text = str(exc)
    return any(signature in text for signature in _SIGNATURES)


def index_only(flt: Filter, spec: CollectionSpec) -> Filter:
    """The conditions of `flt` that the collection's keyword indexes answer alone."""
    indexed = {spec.tenant_key, *spec.keyword_fields}
    return Filter(
        must=tuple(
            c
            for c in flt.must
            if isinstance(c, HasIds) or (isinstance(c, MatchValue | MatchAny) and c.key in indexed)
        )
    )


def _unreadable_among(shard: qe.EdgeShard, ids: Sequence[str]) -> list[str]:
    try:
        shard.retrieve(list(ids), with_payload=True, with_vector=False)
    except BaseException as exc:
        if not is_unreadable_payload(exc):
            raise
        if len(ids) == 1:
            return [ids[0]]
        middle = len(ids) // 2
        return _unreadable_among(shard, ids[:middle]) + _unreadable_among(shard, ids[middle:])
    return []


def find_unreadable(shard: qe.EdgeShard, edge_filter: qe.Filter | None) -> list[str]:
    """Ids of the points matching `edge_filter` (indexed conditions only) whose payload
    cannot be read."""
    found: list[str] = []
    offset: Any = None
    while True:
        records, offset = shard.scroll(
            qe.ScrollRequest(
                offset=offset,
                limit=_PAGE,
                filter=edge_filter,
                with_payload=False,
                with_vector=False,
            )
        )
        found.extend(_unreadable_among(shard, [str(r.id) for r in records]))
        if offset is None:
            return found


def stand_in_payload(shard: qe.EdgeShard, point_id: str, spec: CollectionSpec) -> dict[str, Any]:
    """What the keyword indexes hold for the point, and the `UNREADABLE_FIELD` mark."""
    payload: dict[str, Any] = {UNREADABLE_FIELD: UNREADABLE_NOTE}
    only_this = qe.Filter(must=[qe.HasIdCondition({point_id})])
    for key in (spec.tenant_key, *spec.keyword_fields):
        hits = shard.facet(qe.FacetRequest(key, limit=1, exact=True, filter=only_this)).hits
        if hits:
            payload[key] = hits[0].value
    return payload
