"""Qdrant Edge maintenance: offline compaction keeps every point and exact results, and the
`vectorsvc store optimize` command refuses to run beside a service that holds the store."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from vectorsvc.cli import main
from vectorsvc.config import Settings
from vectorsvc.vectorstore.base import CollectionSpec, Filter, MatchValue, PointRecord
from vectorsvc.vectorstore.edge import EdgeVectorStore
from vectorsvc.vectorstore.filters import DENSE_VECTOR

SPEC = CollectionSpec(name="docs", dimension=8, tenant_key="_tenant", keyword_fields=("id",))


def _points(count: int, seed: int = 0) -> tuple[np.ndarray, list[PointRecord]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, SPEC.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = [
        PointRecord(
            id=f"00000000-0000-0000-0000-{i:012d}",
            vector=vectors[i],
            payload={"_tenant": f"t{i % 3}", "id": str(i)},
        )
        for i in range(count)
    ]
    return vectors, points


def _exact_top(vectors: np.ndarray, query: np.ndarray, tenant: str, k: int) -> list[int]:
    members = np.array([i for i in range(len(vectors)) if f"t{i % 3}" == tenant])
    return members[np.argsort(-(vectors[members] @ query))[:k]].tolist()


def test_optimize_keeps_points_and_exact_results(tmp_path: Path) -> None:
    vectors, points = _points(3000)
    tenant = Filter(must=(MatchValue(key="_tenant", value="t1"),))
    query = vectors[7]
    with EdgeVectorStore(tmp_path) as store:
        store.ensure_collection(SPEC)
        store.upsert("docs", points)
        before = [
            int(h.payload["id"]) for h in store.search("docs", query, filter=tenant, limit=10)
        ]
        store.optimize("docs")
        after = [int(h.payload["id"]) for h in store.search("docs", query, filter=tenant, limit=10)]
        assert store.count("docs", filter=Filter()) == 3000
    assert before == after == _exact_top(vectors, query, "t1", 10)
    with EdgeVectorStore(tmp_path) as store:  # reopens from the compacted segments
        assert store.count("docs", filter=tenant) == 1000
        store.upsert("docs", _points(3, seed=1)[1])  # writes go on after compaction
        assert store.count("docs", filter=Filter()) == 3000


def test_a_shard_made_with_the_old_config_opens_and_compacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards created before the no-graph, on-disk config still load (config is rewritten)."""

    def old_config(self: EdgeVectorStore, spec: CollectionSpec) -> qe.EdgeConfig:
        params = qe.EdgeVectorParams(size=spec.dimension, distance=qe.Distance.Cosine)
        return qe.EdgeConfig(vectors={DENSE_VECTOR: params})

    vectors, points = _points(300)
    with monkeypatch.context() as patch:
        patch.setattr(EdgeVectorStore, "_edge_config", old_config)
        with EdgeVectorStore(tmp_path) as store:
            store.ensure_collection(SPEC)
            store.upsert("docs", points)
    with EdgeVectorStore(tmp_path) as store:
        store.optimize("docs")
        hits = store.search("docs", vectors[0], filter=Filter(), limit=1)
        assert hits[0].payload["id"] == "0"
        assert store.count("docs", filter=Filter()) == 300


def _index_params(store: EdgeVectorStore, collection: str) -> dict[str, tuple[bool, bool]]:
    schema = store._shard(collection).info().payload_schema
    return {
        name: (bool(info.params.on_disk), bool(info.params.is_tenant))
        for name, info in schema.items()
    }


def test_keyword_indexes_are_made_on_disk(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path) as store:
        store.ensure_collection(SPEC)
        assert _index_params(store, "docs") == {"_tenant": (True, True), "id": (True, False)}


def test_optimize_moves_indexes_made_in_ram_to_disk(tmp_path: Path) -> None:
    """Collections from before the indexes moved to disk get them rebuilt, offline."""
    vectors, points = _points(3000)
    tenant = Filter(must=(MatchValue(key="_tenant", value="t2"),))
    with EdgeVectorStore(tmp_path) as store:
        store.ensure_collection(SPEC)
        shard = store._shard("docs")
        for name, params in (
            ("_tenant", qe.KeywordIndexParams(is_tenant=True)),
            ("id", qe.KeywordIndexParams()),
        ):  # as older releases made them
            shard.update(qe.UpdateOperation.delete_field_index(name))
            shard.update(qe.UpdateOperation.create_field_index(name, params))
        store.upsert("docs", points)
        assert _index_params(store, "docs") == {"_tenant": (False, True), "id": (False, False)}
        before = [h.id for h in store.search("docs", vectors[9], filter=tenant, limit=10)]
    with EdgeVectorStore(tmp_path) as store:
        assert store.optimize("docs") is True
        assert _index_params(store, "docs") == {"_tenant": (True, True), "id": (True, False)}
        assert [h.id for h in store.search("docs", vectors[9], filter=tenant, limit=10)] == before
        assert store.count("docs", filter=tenant) == 1000
        by_id = Filter(must=(MatchValue(key="id", value="11"),))
        assert [h.payload["id"] for h in store.scroll("docs", filter=by_id, limit=5).points] == [
            "11"
        ]
        assert store.optimize("docs") is False  # nothing left to do
    with EdgeVectorStore(tmp_path) as store:  # the rebuilt indexes persist
        assert _index_params(store, "docs") == {"_tenant": (True, True), "id": (True, False)}
        assert store.count("docs", filter=tenant) == 1000


def test_float16_collections_keep_their_datatype_and_exact_order(tmp_path: Path) -> None:
    vectors, points = _points(3000)
    tenant = Filter(must=(MatchValue(key="_tenant", value="t2"),))
    with EdgeVectorStore(tmp_path, vector_datatype="float16") as store:
        store.ensure_collection(SPEC)
        store.upsert("docs", points)
    spec = json.loads((tmp_path / "collections" / "docs" / "spec.json").read_text())
    assert spec["extra"]["vector_datatype"] == "float16"
    with EdgeVectorStore(tmp_path) as store:  # a float32 default does not change it
        store.ensure_collection(SPEC)
        for optimized in (False, True):
            hits = store.search("docs", vectors[5], filter=tenant, limit=10)
            assert [int(h.payload["id"]) for h in hits] == _exact_top(vectors, vectors[5], "t2", 10)
            assert hits[0].score == pytest.approx(1.0, abs=1e-3)
            if not optimized:
                store.optimize("docs")


def test_store_optimize_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    with EdgeVectorStore(settings.vectors_dir) as store:
        store.ensure_collection(SPEC)
        store.upsert("docs", _points(50)[1])
        # While something holds the store (the service), the command refuses.
        assert main(["store", "optimize", "--data-dir", str(data)]) == 2
        assert "stop the service first" in capsys.readouterr().err
    assert main(["store", "optimize", "--data-dir", str(data)]) == 0
    assert "docs:" in capsys.readouterr().out


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _cached_pages(path: Path) -> tuple[int, int]:
    """(pages of `path` in the page cache, pages), by mincore(2) on a fresh mapping."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    if size == 0:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert _LIBC.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec), pages
        finally:
            _LIBC.munmap(addr, size)
    finally:
        os.close(fd)


def _segment_files(root: Path) -> list[Path]:
    return [p for p in (root / "collections").rglob("segments/**/*") if p.is_file()]


def _cached_fraction(files: list[Path]) -> float:
    counts = [_cached_pages(p) for p in files]
    return sum(c for c, _ in counts) / max(1, sum(n for _, n in counts))


def test_warm_reads_the_stored_files_into_the_page_cache(tmp_path: Path) -> None:
    # 20,000 float32 384-d vectors: 30 MB on disk, paged in only when touched (Memory.Cold).
    spec = CollectionSpec(name="big", dimension=384, tenant_key="_tenant")
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((20_000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with EdgeVectorStore(tmp_path) as store:
        store.ensure_collection(spec)
        for low in range(0, 20_000, 2000):
            store.upsert(
                "big",
                [
                    PointRecord(
                        id=f"00000000-0000-0000-0000-{i:012d}",
                        vector=vectors[i],
                        payload={"_tenant": f"t{i % 100}", "text": f"document {i}"},
                    )
                    for i in range(low, low + 2000)
                ],
            )
        store.optimize("big")
    files = _segment_files(tmp_path)
    total = sum(p.stat().st_size for p in files)
    assert total > 30_000_000
    for path in files:  # out of the page cache, as a host under memory pressure would do
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    evicted = _cached_fraction(files)
    if evicted > 0.5:
        pytest.skip(f"the kernel kept {evicted:.0%} of the files cached after POSIX_FADV_DONTNEED")
    with EdgeVectorStore(tmp_path) as store:
        tenant = Filter(must=(MatchValue(key="_tenant", value="t5"),))
        before = store.search("big", vectors[5], filter=tenant, limit=3)
        total = sum(p.stat().st_size for p in _segment_files(tmp_path))
        # A budget stops it within one read of the budget.
        assert 5_000_000 <= store.warm(max_bytes=5_000_000) < 5_000_000 + (1 << 20)
        assert store.warm() == total
        assert _cached_fraction(_segment_files(tmp_path)) > 0.99
        after = store.search("big", vectors[5], filter=tenant, limit=3)
        assert [h.id for h in after] == [h.id for h in before]
        assert after[0].payload["_tenant"] == "t5" and after[0].score > 0.999


def test_warm_on_an_empty_store_does_nothing(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path) as store:
        assert store.warm() == 0
        store.ensure_collection(SPEC)
        store.warm()  # an empty collection
        assert store.count("docs", filter=Filter()) == 0
