"""`VectorStore` on Qdrant Edge (qdrant-edge-py 0.9): in-process shards, no server.

Edge has no collections and no aliases, so this module supplies both:

    root/
      .lock                      exclusive flock: one process per root (Edge's WAL would
                                 refuse a second opener anyway, but only lazily, per shard)
      aliases.json               {"alias": "collection"}, replaced atomically
      collections/<name>/
        spec.json                the CollectionSpec; written LAST, so it marks a finished
                                 ensure_collection (a shard dir without it is an orphan)
        shard/                   the Edge shard directory

Upserts are durable when `update()` returns (Edge's WAL is on by default).

Index maintenance never runs in the service. Every search is exact: the HNSW graph is
switched off (m=0, payload_m=0), and a scope is found through the tenant keyword index, so
a search reads only its scope's vectors (1,000 of 1M points: under 1 ms). `optimize()`
holds the GIL (the whole process stops) for as long as it runs, so only the explicit
`optimize(collection)` runs it, offline (`vectorsvc store optimize`, service stopped): it
moves points from the appendable segment, which lives in RAM with its payloads, into
compacted segments whose vectors, payloads and id tracker stay on disk, paged in on demand
(`Memory.Cold`). That and float16 vectors (the service's VECTORSVC_VECTOR_DATATYPE) keep
resident memory at 1M points under 2.5 GB. See README, "Performance".

Edge stores payloads it cannot read back (nested past 128 levels): a read or delete that
meets one replaces it with a stand-in and goes on (`edge_payloads`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import qdrant_edge as qe

from vectorsvc.vectorstore.base import (
    CollectionNotFound,
    CollectionSpec,
    Condition,
    DimensionMismatch,
    Filter,
    HasIds,
    MatchAny,
    MatchValue,
    PointRecord,
    Range,
    ScoredPoint,
    ScrollPage,
    Vector,
    VectorStoreError,
)
from vectorsvc.vectorstore.edge_payloads import (
    find_unreadable,
    index_only,
    is_unreadable_payload,
    stand_in_payload,
)
from vectorsvc.vectorstore.filters import (
    DENSE_VECTOR,
    canonical_id,
    canonical_ids,
    dense_list,
    facet_key,
    split_any,
)

# Names become directory names: keep them to a safe, Qdrant-compatible alphabet.
_NAME_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_SPEC_FILE = "spec.json"
_SHARD_DIR = "shard"
_ALIASES_FILE = "aliases.json"
_LOCK_FILE = ".lock"
# Stored in spec.json `extra` when a collection is created; absent means float32.
_DATATYPE_KEY = "vector_datatype"
_WARM_CHUNK = 1 << 20  # bytes per read() of warm(): each releases the GIL
VectorDatatype = Literal["float32", "float16"]
_READ_PAGE = 512
T = TypeVar("T")

logger = logging.getLogger(__name__)


def _check_name(name: str, what: str = "collection") -> str:
    if not _NAME_RULE.match(name):
        raise VectorStoreError(f"invalid {what} name {name!r}")
    return name


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write temp file in the same directory, fsync, os.replace: readers (and a crash)
    see either the old or the new file, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _spec_to_json(spec: CollectionSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dimension": spec.dimension,
        "tenant_key": spec.tenant_key,
        "keyword_fields": list(spec.keyword_fields),
        "float_fields": list(spec.float_fields),
        "extra": dict(spec.extra),
    }


def _spec_from_json(data: dict[str, Any]) -> CollectionSpec:
    return CollectionSpec(
        name=str(data["name"]),
        dimension=int(data["dimension"]),
        tenant_key=str(data["tenant_key"]),
        keyword_fields=tuple(data.get("keyword_fields", ())),
        float_fields=tuple(data.get("float_fields", ())),
        extra=dict(data.get("extra", {})),
    )


def _merge_specs(old: CollectionSpec, new: CollectionSpec) -> CollectionSpec:
    """Indexes are only ever added, so the persisted spec is the union of both."""
    return CollectionSpec(
        name=old.name,
        dimension=old.dimension,
        tenant_key=new.tenant_key,
        keyword_fields=tuple(dict.fromkeys(old.keyword_fields + new.keyword_fields)),
        float_fields=tuple(dict.fromkeys(old.float_fields + new.float_fields)),
        extra={**old.extra, **new.extra},
    )


def _index_plan(spec: CollectionSpec) -> dict[str, qe.KeywordIndexParams | qe.FloatIndexParams]:
    """field -> Edge index params. The tenant key wins if also listed as a keyword field."""
    plan: dict[str, qe.KeywordIndexParams | qe.FloatIndexParams] = {}
    for field_name in spec.float_fields:
        plan[field_name] = qe.FloatIndexParams()
    # Keyword indexes on disk (mmap'd, in the page cache that warm() fills): in RAM, the
    # four of a 1M-point collection held 370 MB, and searches were no faster (0.14 ms
    # against 0.11 on disk, tenant filter, ten payloads).
    for field_name in spec.keyword_fields:
        plan[field_name] = qe.KeywordIndexParams(on_disk=True)
    plan[spec.tenant_key] = qe.KeywordIndexParams(is_tenant=True, on_disk=True)
    return plan


def _same_index(have: Any, want: qe.KeywordIndexParams | qe.FloatIndexParams) -> bool:
    """Whether an existing index (`ShardInfo.payload_schema` entry) has the planned params."""
    params = have.params
    if type(params) is not type(want):
        return False
    return all(
        bool(getattr(params, attr, None)) == bool(getattr(want, attr, None))
        for attr in ("is_tenant", "on_disk")
    )


def _match_value(value: str | int | bool) -> qe.MatchValue:
    if isinstance(value, bool):
        # qdrant-edge 0.9 extracts a Python bool as the integer 0/1 (bool subclasses int),
        # so MatchValue(True) silently matches payload 1, never true. numpy.bool_ is not an
        # int to its extractor and arrives as a real boolean (measured; see tests).
        return qe.MatchValue(np.bool_(value))  # type: ignore[arg-type]
    return qe.MatchValue(value)


def _condition(cond: Condition) -> qe.ConditionType:
    if isinstance(cond, MatchValue):
        return qe.FieldCondition(cond.key, match=_match_value(cond.value))
    if isinstance(cond, MatchAny):
        strings, integers = split_any(cond.values)
        if strings and integers:
            # Mixed kinds: OR of one keyword list and one integer list.
            return qe.Filter(
                should=[
                    qe.FieldCondition(cond.key, match=qe.MatchAny(strings)),
                    qe.FieldCondition(cond.key, match=qe.MatchAny(integers)),
                ]
            )
        values: list[str] | list[int] = integers if integers else strings
        return qe.FieldCondition(cond.key, match=qe.MatchAny(values))
    if isinstance(cond, Range):
        return qe.FieldCondition(
            cond.key, range=qe.RangeFloat(gte=cond.gte, gt=cond.gt, lte=cond.lte, lt=cond.lt)
        )
    if isinstance(cond, HasIds):
        return qe.HasIdCondition(set(canonical_ids(cond.ids)))
    raise TypeError(f"unsupported condition {cond!r}")


def to_edge_filter(flt: Filter) -> qe.Filter | None:
    """Our Filter -> `qdrant_edge.Filter`, or None for "everything"."""
    if not flt.must:
        return None
    return qe.Filter(must=[_condition(c) for c in flt.must])


def _payload(raw: dict[str, Any] | None) -> dict[str, Any]:
    return dict(raw) if raw else {}


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
        self._collections_dir = self._root / "collections"
        self._aliases_path = self._root / _ALIASES_FILE
        self._max_search_threads = max_search_threads
        self._collections_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_root_lock()
        self._lock = threading.Lock()
        self._write_locks: dict[str, threading.Lock] = {}
        self._shards: dict[str, qe.EdgeShard] = {}
        self._closed = False
        self._specs = self._load_specs()
        self._aliases = self._load_aliases()

    # --- lifecycle ------------------------------------------------------------------------

    def _acquire_root_lock(self) -> int:
        fd = os.open(self._root / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise VectorStoreError(
                f"{self._root} is already open by another EdgeVectorStore"
            ) from exc
        return fd

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
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
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
        it, so the whole process waits: at 1M points a search's ten payloads took 6 to 9
        such reads (0.6 ms of the GIL). Pages in the cache cost a search a few microseconds
        each. Nothing is mapped here, so resident memory grows only as searches touch pages.

        The reads release the GIL, so the service calls this again every
        VECTORSVC_WARM_STORE_INTERVAL_S while it serves: some hosts page out file pages
        nobody read for a minute (these CI machines do, through DAMON), and a read counts as
        a use. Files that vanish meanwhile (an optimize replacing segments) are skipped.
        """
        total = 0
        buffer = bytearray(_WARM_CHUNK)
        for name in self.list_collections():
            self._shard(name)  # open it now: searches run inline only on an open shard
            # The segments only: the WAL is read back only on a restart.
            segments = self._collection_dir(name) / _SHARD_DIR / "segments"
            for path in sorted(segments.rglob("*")):
                try:
                    with open(path, "rb", buffering=0) as file:
                        while read := file.readinto(buffer):
                            total += read
                            if max_bytes is not None and total >= max_bytes:
                                return total
                except (IsADirectoryError, FileNotFoundError, PermissionError):
                    continue
        return total

    def optimize(self, collection: str) -> bool:
        """Compact the appendable segment into on-disk segments (no graph is built), and
        bring payload indexes made with older params up to the current ones.

        Blocks and holds the GIL: seconds per 100k points. Offline only (service stopped).
        """
        name = self._resolve(collection)
        shard = self._shard(name)
        with self._write_lock(name):
            rebuilt = self._rebuild_changed_indexes(shard, self._spec(name))
            optimized = bool(shard.optimize())
            shard.flush()
        return optimized or rebuilt

    @staticmethod
    def _rebuild_changed_indexes(shard: qe.EdgeShard, spec: CollectionSpec) -> bool:
        """Rebuild the payload indexes whose params the plan has changed since they were
        made (collections from before keyword indexes moved to disk keep theirs in RAM
        until this runs). Offline: a rebuild holds the GIL for seconds at 1M points."""
        schema = shard.info().payload_schema
        changed = [
            (field_name, params)
            for field_name, params in _index_plan(spec).items()
            if field_name in schema and not _same_index(schema[field_name], params)
        ]
        for field_name, params in changed:
            shard.update(qe.UpdateOperation.delete_field_index(field_name))
            shard.update(qe.UpdateOperation.create_field_index(field_name, params))
        return bool(changed)

    # --- persistence ----------------------------------------------------------------------

    def _collection_dir(self, name: str) -> Path:
        return self._collections_dir / _check_name(name)

    def _load_specs(self) -> dict[str, CollectionSpec]:
        specs: dict[str, CollectionSpec] = {}
        for spec_path in sorted(self._collections_dir.glob(f"*/{_SPEC_FILE}")):
            spec = _spec_from_json(json.loads(spec_path.read_text(encoding="utf-8")))
            specs[spec.name] = spec
        return specs

    def _load_aliases(self) -> dict[str, str]:
        if not self._aliases_path.exists():
            return {}
        data = json.loads(self._aliases_path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()}

    def _edge_config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        # Edge needs the vectors declared on create AND on load (EdgeConfig() without
        # vectors is rejected); on load it also validates them against the segments.
        # No graph (m=0): every search is exact, and optimize() only compacts. Compacted
        # segments keep vectors, payloads and ids on disk, paged in on demand (Cold). At 1M
        # points Cached vectors made the service 2.7 GB resident, Cold 1.9 GB; the price is
        # a page fault per vector page on a scope's first search (raw store p50 4.3 ms
        # right after compaction, under 1 ms once warm).
        half = spec.extra.get(_DATATYPE_KEY) == "float16"
        return qe.EdgeConfig(
            vectors={
                DENSE_VECTOR: qe.EdgeVectorParams(
                    size=spec.dimension,
                    distance=qe.Distance.Cosine,
                    memory=qe.Memory.Cold,
                    datatype=qe.VectorStorageDatatype.Float16 if half else None,
                )
            },
            hnsw_config=qe.HnswIndexConfig(
                m=0, ef_construct=100, full_scan_threshold=10_000, payload_m=0
            ),
            payload_memory=qe.Memory.Cold,
            id_tracker_memory=qe.Memory.Cold,
            max_search_threads=self._max_search_threads,
        )

    # --- lookup ---------------------------------------------------------------------------

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

    def _shard(self, collection: str) -> qe.EdgeShard:
        with self._lock:
            self._check_open()
            shard = self._shards.get(collection)
            if shard is None:
                spec = self._specs.get(collection)
                if spec is None:
                    raise CollectionNotFound(collection)
                shard_dir = self._collection_dir(collection) / _SHARD_DIR
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
        name = _check_name(spec.name)
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
            shard_dir = coll_dir / _SHARD_DIR
            if existing is None:
                # No spec.json: any shard dir here is an orphan of a create that never
                # returned, so it cannot hold acknowledged data.
                if shard_dir.exists():
                    shutil.rmtree(shard_dir)
                datatype = spec.extra.get(_DATATYPE_KEY, self._vector_datatype)
                spec = replace(spec, extra={**spec.extra, _DATATYPE_KEY: datatype})
                coll_dir.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(shard_dir), self._edge_config(spec))
                try:
                    self._add_indexes(shard, spec)
                    shard.flush()  # indexes on disk before spec.json declares the collection
                    _write_json_atomic(coll_dir / _SPEC_FILE, _spec_to_json(spec))
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
            merged = _merge_specs(existing, spec)
            self._add_indexes(opened, merged)
            if merged != existing:
                opened.flush()
                _write_json_atomic(coll_dir / _SPEC_FILE, _spec_to_json(merged))
                self._specs[name] = merged

    @staticmethod
    def _add_indexes(shard: qe.EdgeShard, spec: CollectionSpec) -> None:
        indexed = set(shard.info().payload_schema)
        for field_name, params in _index_plan(spec).items():
            if field_name not in indexed:
                shard.update(qe.UpdateOperation.create_field_index(field_name, params))

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

    def set_alias(self, alias: str, collection: str) -> None:
        _check_name(alias, "alias")
        with self._lock:
            self._check_open()
            if collection not in self._specs:
                raise CollectionNotFound(collection)
            if alias in self._specs:
                raise VectorStoreError(f"{alias!r} is a collection, not an alias")
            aliases = {**self._aliases, alias: collection}
            _write_json_atomic(self._aliases_path, aliases)  # the switch is one os.replace
            self._aliases = aliases

    def resolve_alias(self, alias: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._aliases.get(alias)

    # --- payloads the engine cannot read (see edge_payloads) --------------------------------

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
        dimension = self._spec(name).dimension
        edge_points = []
        for point in points:
            if point.vector is None:
                raise VectorStoreError(f"point {point.id} has no vector")
            edge_points.append(
                qe.Point(
                    canonical_id(point.id),
                    {DENSE_VECTOR: dense_list(name, dimension, point.vector)},
                    dict(point.payload),
                )
            )
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
        request = qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=qe.Query.Nearest(query, using=DENSE_VECTOR),
            filter=to_edge_filter(filter),
            with_payload=True,
            with_vector=False,
        )
        shard = self._shard(name)
        try:
            hits = shard.query(request)
        except BaseException as exc:
            if not is_unreadable_payload(exc):
                raise
            hits = self._after_repair(name, filter, lambda: shard.query(request))
        return [
            ScoredPoint(id=str(h.id), score=float(h.score), payload=_payload(h.payload))
            for h in hits
        ]

    def retrieve(self, collection: str, ids: Sequence[str]) -> list[PointRecord]:
        name = self._resolve(collection)
        wanted = canonical_ids(ids)
        if not wanted:
            return []
        point_ids: list[qe.PointId] = list(wanted)
        shard = self._shard(name)
        records = self._reading(
            name,
            Filter(must=(HasIds(tuple(wanted)),)),
            lambda: shard.retrieve(point_ids, with_payload=True, with_vector=False),
        )
        by_id = {str(r.id): r for r in records}
        # Request order, duplicates once, missing left out: same as the remote backend.
        return [
            PointRecord(id=i, payload=_payload(by_id[i].payload))
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
            points=[PointRecord(id=str(r.id), payload=_payload(r.payload)) for r in records],
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
