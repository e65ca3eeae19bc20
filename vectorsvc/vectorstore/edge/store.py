"""`VectorStore` on Qdrant Edge (qdrant-edge-py 0.9): in-process shards, no server.

Edge has no collections and no aliases, so this package supplies both: `layout` is the
store root on disk (a shard and a spec.json per collection, aliases.json), `locking` keeps
one process per root, `shards` configures a shard (exact search, no graph, cold memory,
payload indexes), `filters` translates our filters, `maintenance` warms the page cache and
compacts offline, and `payloads` repairs stored payloads Edge cannot read back.

Upserts are durable when `update()` returns (Edge's WAL is on by default).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import qdrant_edge as qe

from vectorsvc.vectorstore.base import (
    CollectionNotFound,
    CollectionSpec,
    DimensionMismatch,
    Filter,
    Fusion,
    HasIds,
    PointRecord,
    ScoredPoint,
    ScrollPage,
    SparseVector,
    Vector,
    VectorStoreError,
)
from vectorsvc.vectorstore.edge.filters import to_edge_filter
from vectorsvc.vectorstore.edge.layout import (
    ALIASES_FILE,
    COLLECTIONS_DIR,
    DATATYPE_KEY,
    SEGMENTS_DIR,
    SHARD_DIR,
    SPEC_FILE,
    check_name,
    load_aliases,
    load_specs,
    merge_specs,
    spec_to_json,
    write_json_atomic,
)
from vectorsvc.vectorstore.edge.locking import acquire_root_lock, release_root_lock
from vectorsvc.vectorstore.edge.maintenance import WARM_CHUNK, optimize_shard, page_in
from vectorsvc.vectorstore.edge.payloads import (
    find_unreadable,
    index_only,
    is_unreadable_payload,
    stand_in_payload,
)
from vectorsvc.vectorstore.edge.queries import (
    dense_request,
    edge_payload,
    edge_sparse,
    edge_vector,
    hybrid_request,
    idf_filter,
    keyword_request,
)
from vectorsvc.vectorstore.edge.shards import add_indexes, edge_config
from vectorsvc.vectorstore.filters import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    canonical_id,
    canonical_ids,
    dense_list,
    facet_key,
)

_READ_PAGE = 512
T = TypeVar("T")
VectorDatatype = Literal["float32", "float16"]

logger = logging.getLogger(__name__)


class EdgeVectorStore:
    """Qdrant Edge backend: one shard per collection under `root`, aliases in a JSON file.

    Thread-safe: shards are opened lazily and kept in a dict guarded by `_lock`; Edge's
    queries and updates are themselves thread-safe. Writes to one collection (upsert,
    delete) are serialised by a per-collection lock so `delete` can count exactly.
    """

    backend_name = "edge"

    def __init__(
        self,
        root: Path,
        *,
        max_search_threads: int | None = None,
        vector_datatype: VectorDatatype = "float32",
    ) -> None:
        """`vector_datatype` applies to collections created from now on; each collection
        keeps the one it was created with. float16 halves vector memory (cosine to the
        float32 vector >= 0.99999)."""
        self._root = Path(root)
        self._vector_datatype = vector_datatype
        self._collections_dir = self._root / COLLECTIONS_DIR
        self._aliases_path = self._root / ALIASES_FILE
        self._max_search_threads = max_search_threads
        self._collections_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = acquire_root_lock(self._root)
        self._lock = threading.Lock()
        self._write_locks: dict[str, threading.Lock] = {}
        self._shards: dict[str, qe.EdgeShard] = {}
        self._closed = False
        self._specs = load_specs(self._collections_dir)
        self._aliases = load_aliases(self._aliases_path)

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close every open shard, then release the root. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = self._shards, {}
            errors: list[BaseException] = []
            for name, shard in shards.items():
                # Wait for an in-flight upsert/delete on this collection to finish.
                with self._write_locks.get(name) or nullcontext():
                    try:
                        shard.flush()  # segments on disk: reopening needs no WAL replay
                        shard.close()
                    except Exception as exc:  # close the others regardless
                        errors.append(exc)
            release_root_lock(self._lock_fd)
            if errors:
                raise VectorStoreError(f"closing shards failed: {errors!r}") from errors[0]

    def __enter__(self) -> EdgeVectorStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def warm(self, max_bytes: int | None = None) -> int:
        """Read every segment file of every collection once, so that the operating system
        holds them in its page cache; returns the bytes read. `max_bytes` stops it there (a
        store larger than memory would only push itself out of the cache).

        A search maps what it reads from these files: its scope's vectors, and the payloads
        of its hits. A page not in the cache is a disk read, and Edge holds the GIL through
        it, so the whole process waits (figures: docs/performance.md); pages in the cache
        cost a search next to nothing. Nothing is mapped here, so resident memory grows only
        as searches touch pages.

        The reads release the GIL, so the service calls this again every
        VECTORSVC_WARM_STORE_INTERVAL_S while it serves: some hosts page out file pages
        nobody read for a minute (these CI machines do, through DAMON), and a read counts as
        a use. Files that vanish meanwhile (an optimize replacing segments) are skipped.
        """
        total = 0
        buffer = bytearray(WARM_CHUNK)
        for name in self.list_collections():
            self._shard(name)  # open it now: searches run inline only on an open shard
            # The segments only: the WAL is read back only on a restart.
            segments = self._collection_dir(name) / SHARD_DIR / SEGMENTS_DIR
            remaining = None if max_bytes is None else max_bytes - total
            total += page_in(sorted(segments.rglob("*")), buffer, remaining)
            if max_bytes is not None and total >= max_bytes:
                return total
        return total

    def optimize(self, collection: str) -> bool:
        """Compact the appendable segment into on-disk segments (no graph is built), and
        bring payload indexes made with older params up to the current ones.

        Blocks and holds the GIL: seconds per 100k points. Offline only (service stopped).
        """
        name = self._resolve(collection)
        shard = self._shard(name)
        with self._write_lock(name):
            return optimize_shard(shard, self._spec(name))

    # --- lookup ---------------------------------------------------------------------------

    def _collection_dir(self, name: str) -> Path:
        return self._collections_dir / check_name(name)

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError("the vector store is closed")

    def _resolve(self, name: str) -> str:
        """A collection name, or an alias of one (as Qdrant server accepts aliases)."""
        with self._lock:
            self._check_open()
            target = self._lookup(name)
        if target is None:
            raise CollectionNotFound(name)
        return target

    def _lookup(self, name: str) -> str | None:
        """The collection `name` is, or points to as an alias; the caller holds the lock."""
        if name in self._specs:
            return name
        target = self._aliases.get(name)
        return target if target is not None and target in self._specs else None

    def search_inline(self, collection: str) -> bool:
        """True once the collection's shard is open (opening one reads its files) and no
        other thread holds the store's lock (it may be opening a shard)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._closed:
                return False
            return self._lookup(collection) in self._shards
        finally:
            self._lock.release()

    def _edge_config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        return edge_config(spec, self._max_search_threads)

    def _shard(self, collection: str) -> qe.EdgeShard:
        with self._lock:
            self._check_open()
            shard = self._shards.get(collection)
            if shard is None:
                spec = self._specs.get(collection)
                if spec is None:
                    raise CollectionNotFound(collection)
                shard_dir = self._collection_dir(collection) / SHARD_DIR
                shard = qe.EdgeShard.load(str(shard_dir), self._edge_config(spec))
                self._shards[collection] = shard
            return shard

    def _write_lock(self, collection: str) -> threading.Lock:
        with self._lock:
            return self._write_locks.setdefault(collection, threading.Lock())

    def _spec(self, collection: str) -> CollectionSpec:
        with self._lock:
            return self._specs[collection]

    # --- collections and aliases ----------------------------------------------------------

    def ensure_collection(self, spec: CollectionSpec) -> None:
        name = check_name(spec.name)
        if spec.dimension <= 0:
            raise VectorStoreError(f"dimension must be positive, got {spec.dimension}")
        # Under the global lock for simplicity: creating a collection is rare, and only
        # shard lookups (not queries already running) wait for it.
        with self._lock:
            self._check_open()
            existing = self._specs.get(name)
            if existing is not None and existing.dimension != spec.dimension:
                raise DimensionMismatch(name, expected=spec.dimension, actual=existing.dimension)
            if name in self._aliases:
                raise VectorStoreError(f"{name!r} is already an alias")
            coll_dir = self._collection_dir(name)
            shard_dir = coll_dir / SHARD_DIR
            if existing is None:
                # No spec.json: any shard dir here is an orphan of a create that never
                # returned, so it cannot hold acknowledged data.
                if shard_dir.exists():
                    shutil.rmtree(shard_dir)
                datatype = spec.extra.get(DATATYPE_KEY, self._vector_datatype)
                spec = replace(spec, extra={**spec.extra, DATATYPE_KEY: datatype})
                coll_dir.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(shard_dir), self._edge_config(spec))
                try:
                    add_indexes(shard, spec)
                    shard.flush()  # indexes on disk before spec.json declares the collection
                    write_json_atomic(coll_dir / SPEC_FILE, spec_to_json(spec))
                except BaseException:
                    shard.close()  # leave an orphan dir, never a half-registered shard
                    raise
                self._shards[name] = shard
                self._specs[name] = spec
                return
            opened = self._shards.get(name)
            if opened is None:
                opened = qe.EdgeShard.load(str(shard_dir), self._edge_config(existing))
                self._shards[name] = opened
            merged = merge_specs(existing, spec)
            add_indexes(opened, merged)
            if merged != existing:
                opened.flush()
                write_json_atomic(coll_dir / SPEC_FILE, spec_to_json(merged))
                self._specs[name] = merged

    def collection_exists(self, name: str) -> bool:
        """True for a collection or an alias of one (Qdrant's semantics)."""
        try:
            self._resolve(name)
        except CollectionNotFound:
            return False
        return True

    def list_collections(self) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(self._specs)

    def delete_collection(self, name: str) -> None:
        name = check_name(name)
        with self._lock:
            self._check_open()
            if name not in self._specs:
                return
            if name in self._aliases.values():
                raise VectorStoreError(f"{name!r} is the target of an alias")
            with self._write_locks.setdefault(name, threading.Lock()):
                shard = self._shards.pop(name, None)
                if shard is not None:
                    shard.close()
                del self._specs[name]
                coll_dir = self._collection_dir(name)
                (coll_dir / SPEC_FILE).unlink(missing_ok=True)  # no spec: no collection
                shutil.rmtree(coll_dir, ignore_errors=True)

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias, "alias")
        with self._lock:
            self._check_open()
            if collection not in self._specs:
                raise CollectionNotFound(collection)
            if alias in self._specs:
                raise VectorStoreError(f"{alias!r} is a collection, not an alias")
            aliases = {**self._aliases, alias: collection}
            write_json_atomic(self._aliases_path, aliases)  # the switch is one os.replace
            self._aliases = aliases

    def resolve_alias(self, alias: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._aliases.get(alias)

    # --- payloads the engine cannot read (see payloads) -------------------------------------

    def _reading(self, name: str, flt: Filter, read: Callable[[], T], *, locked: bool = False) -> T:
        """`read()`; if a stored payload it touches cannot be decoded, replace the unreadable
        payloads among the points `flt` selects and read again."""
        try:
            return read()
        except BaseException as exc:
            if not is_unreadable_payload(exc):
                raise
        return self._after_repair(name, flt, read, locked=locked)

    def _after_repair(
        self, name: str, flt: Filter, read: Callable[[], T], *, locked: bool = False
    ) -> T:
        self._repair_unreadable(name, flt, locked=locked)
        try:
            return read()
        except BaseException as exc:
            if not is_unreadable_payload(exc):
                raise
            raise VectorStoreError(
                f"collection {name!r} holds a payload that cannot be read and was not found"
            ) from exc

    def _repair_unreadable(self, name: str, flt: Filter, *, locked: bool) -> int:
        """Give every unreadable payload among the points that `flt`'s indexed conditions
        select (the whole collection if none is found there) a readable stand-in."""
        spec = self._spec(name)
        shard = self._shard(name)
        scope = index_only(flt, spec)
        bad = find_unreadable(shard, to_edge_filter(scope))
        if not bad and scope.must:
            # A filter check may read points outside the scope (the engine picks the order).
            bad = find_unreadable(shard, None)
        for point_id in bad:
            payload = stand_in_payload(shard, point_id, spec)
            with nullcontext() if locked else self._write_lock(name):
                shard.update(qe.UpdateOperation.overwrite_payload([point_id], payload))
        if bad:
            logger.warning(
                "collection %s: replaced %d unreadable stored payloads with stand-ins (ids %s)",
                name,
                len(bad),
                ", ".join(bad[:20]),
            )
        return len(bad)

    def _make_readable(self, name: str, flt: Filter) -> None:
        """Read every payload `flt` selects (the caller holds the write lock); repair the
        collection if one cannot be read."""
        shard = self._shard(name)
        edge_filter = to_edge_filter(flt)
        offset: Any = None
        while True:
            request = qe.ScrollRequest(
                offset=offset,
                limit=_READ_PAGE,
                filter=edge_filter,
                with_payload=True,
                with_vector=False,
            )
            try:
                _, offset = shard.scroll(request)
            except BaseException as exc:
                if not is_unreadable_payload(exc):
                    raise
                self._repair_unreadable(name, flt, locked=True)
                return
            if offset is None:
                return

    # --- points ---------------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> None:
        name = self._resolve(collection)
        spec = self._spec(name)
        edge_points = []
        for point in points:
            if point.vector is None:
                raise VectorStoreError(f"point {point.id} has no vector")
            vectors: dict[str, Any] = {DENSE_VECTOR: dense_list(name, spec.dimension, point.vector)}
            if spec.sparse and point.sparse is not None:
                vectors[SPARSE_VECTOR] = edge_sparse(point.sparse)
            edge_points.append(qe.Point(canonical_id(point.id), vectors, dict(point.payload)))
        if not edge_points:
            return
        shard = self._shard(name)
        with self._write_lock(name):
            shard.update(qe.UpdateOperation.upsert_points(edge_points))

    def search(
        self,
        collection: str,
        vector: Vector,
        *,
        filter: Filter,
        limit: int,
        offset: int = 0,
    ) -> list[ScoredPoint]:
        name = self._resolve(collection)
        query = dense_list(name, self._spec(name).dimension, vector)
        edge_filter = to_edge_filter(filter)
        return self._query(
            name, filter, dense_request(query, edge_filter, limit=limit, offset=offset)
        )

    def has_sparse(self, collection: str) -> bool:
        return self._spec(self._resolve(collection)).sparse

    def _sparse_spec(self, collection: str) -> str:
        name = self._resolve(collection)
        if not self._spec(name).sparse:
            raise VectorStoreError(f"collection {name!r} holds no keyword vectors")
        return name

    def search_keyword(
        self,
        collection: str,
        sparse: SparseVector,
        *,
        filter: Filter,
        limit: int,
        idf_scope: Filter | None = None,
    ) -> list[ScoredPoint]:
        name = self._sparse_spec(collection)
        request = keyword_request(
            sparse, to_edge_filter(filter), limit=limit, idf_filter=idf_filter(idf_scope)
        )
        return self._query(name, filter, request)

    def search_hybrid(
        self,
        collection: str,
        vector: Vector,
        sparse: SparseVector,
        *,
        filter: Filter,
        limit: int,
        candidates: int,
        rrf_k: int,
        idf_scope: Filter | None = None,
        fusion: Fusion = "rrf",
    ) -> list[ScoredPoint]:
        name = self._sparse_spec(collection)
        query = dense_list(name, self._spec(name).dimension, vector)
        request = hybrid_request(
            query,
            sparse,
            to_edge_filter(filter),
            limit=limit,
            candidates=max(candidates, limit),
            rrf_k=rrf_k,
            idf_filter=idf_filter(idf_scope),
            fusion=fusion,
        )
        return self._query(name, filter, request)

    def _query(self, name: str, filter: Filter, request: qe.QueryRequest) -> list[ScoredPoint]:
        shard = self._shard(name)
        try:
            hits = shard.query(request)
        except BaseException as exc:
            if not is_unreadable_payload(exc):
                raise
            hits = self._after_repair(name, filter, lambda: shard.query(request))
        return [
            ScoredPoint(id=str(h.id), score=float(h.score), payload=edge_payload(h.payload))
            for h in hits
        ]

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[PointRecord]:
        name = self._resolve(collection)
        wanted = canonical_ids(ids)
        if not wanted:
            return []
        point_ids: list[qe.PointId] = list(wanted)
        shard = self._shard(name)
        records = self._reading(
            name,
            Filter(must=(HasIds(tuple(wanted)),)),
            lambda: shard.retrieve(point_ids, with_payload=True, with_vector=with_vectors),
        )
        by_id = {str(r.id): r for r in records}
        # Request order, duplicates once, missing left out: same as the remote backend.
        return [
            PointRecord(
                id=i,
                payload=edge_payload(by_id[i].payload),
                vector=edge_vector(by_id[i].vector) if with_vectors else None,
            )
            for i in dict.fromkeys(wanted)
            if i in by_id
        ]

    def count(self, collection: str, *, filter: Filter) -> int:
        name = self._resolve(collection)
        request = qe.CountRequest(exact=True, filter=to_edge_filter(filter))
        shard = self._shard(name)
        return int(self._reading(name, filter, lambda: shard.count(request)))

    def scroll(
        self,
        collection: str,
        *,
        filter: Filter,
        limit: int,
        offset: str | None = None,
    ) -> ScrollPage:
        name = self._resolve(collection)
        request = qe.ScrollRequest(
            offset=canonical_id(offset) if offset is not None else None,
            limit=limit,
            filter=to_edge_filter(filter),
            with_payload=True,
            with_vector=False,
        )
        shard = self._shard(name)
        records, next_offset = self._reading(name, filter, lambda: shard.scroll(request))
        return ScrollPage(
            points=[PointRecord(id=str(r.id), payload=edge_payload(r.payload)) for r in records],
            # Edge returns a uuid.UUID (the first id of the next page, inclusive).
            next_offset=str(next_offset) if next_offset is not None else None,
        )

    def delete(self, collection: str, *, filter: Filter) -> int:
        name = self._resolve(collection)
        shard = self._shard(name)
        edge_filter = to_edge_filter(filter)
        # Count and delete under the collection's write lock: no upsert can slip in between,
        # so the count is exactly what the delete removes.
        count = qe.CountRequest(exact=True, filter=edge_filter)
        with self._write_lock(name):
            removed = int(self._reading(name, filter, lambda: shard.count(count), locked=True))
            if removed:
                # A delete reads the payloads it removes, and one it cannot read fails it
                # halfway: replace such payloads first.
                self._make_readable(name, filter)
                if edge_filter is None:
                    edge_filter = qe.Filter(must=[])  # matches every point
                shard.update(qe.UpdateOperation.delete_points_by_filter(edge_filter))
        return removed

    def facet(self, collection: str, key: str, *, filter: Filter, limit: int) -> dict[str, int]:
        name = self._resolve(collection)
        request = qe.FacetRequest(key, limit=limit, exact=True, filter=to_edge_filter(filter))
        shard = self._shard(name)
        response = self._reading(name, filter, lambda: shard.facet(request))
        return {facet_key(hit.value): int(hit.count) for hit in response.hits}
