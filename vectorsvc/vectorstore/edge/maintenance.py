"""Maintenance of Edge shards: warming the page cache, and offline compaction.

Index maintenance never runs in the service. `optimize()` holds the GIL (the whole process
stops) for as long as it runs, so only the explicit `optimize(collection)` runs it, offline
(`vectorsvc store optimize`, service stopped): it moves points from the appendable segment,
which lives in RAM with its payloads, into compacted segments whose vectors, payloads and id
tracker stay on disk. `page_in` reads segment files once, so that the operating system holds
them in its page cache (see `EdgeVectorStore.warm`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import qdrant_edge as qe

from vectorsvc.vectorstore.base import CollectionSpec
from vectorsvc.vectorstore.edge.shards import index_plan, same_index

WARM_CHUNK = 1 << 20  # bytes per read() of page_in(): each releases the GIL


def page_in(paths: Iterable[Path], buffer: bytearray, limit: int | None) -> int:
    """Read each file once into `buffer` (the reads release the GIL); returns the bytes
    read, stopping as soon as they reach `limit`. Files that vanish meanwhile (an optimize
    replacing segments), directories and unreadable files are skipped."""
    total = 0
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as file:
                while read := file.readinto(buffer):
                    total += read
                    if limit is not None and total >= limit:
                        return total
        except (IsADirectoryError, FileNotFoundError, PermissionError):
            continue
    return total


def optimize_shard(shard: qe.EdgeShard, spec: CollectionSpec) -> bool:
    """Compact the appendable segment into on-disk segments (no graph is built), and bring
    payload indexes made with older params up to the current ones; the caller holds the
    collection's write lock. Blocks and holds the GIL: seconds per 100k points."""
    rebuilt = rebuild_changed_indexes(shard, spec)
    optimized = bool(shard.optimize())
    shard.flush()
    return optimized or rebuilt


def rebuild_changed_indexes(shard: qe.EdgeShard, spec: CollectionSpec) -> bool:
    """Rebuild the payload indexes whose params the plan has changed since they were
    made (collections from before keyword indexes moved to disk keep theirs in RAM
    until this runs). Offline: a rebuild holds the GIL for seconds at 1M points."""
    schema = shard.info().payload_schema
    changed = [
        (field_name, params)
        for field_name, params in index_plan(spec).items()
        if field_name in schema and not same_index(schema[field_name], params)
    ]
    for field_name, params in changed:
        shard.update(qe.UpdateOperation.delete_field_index(field_name))
        shard.update(qe.UpdateOperation.create_field_index(field_name, params))
    return bool(changed)
