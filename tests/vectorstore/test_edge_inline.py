"""`EdgeVectorStore.search_inline`: a search may run on the event loop only where it cannot
wait on files or on a lock (the service then skips the hop to a worker thread)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from vectorsvc.config import Settings
from vectorsvc.vectorstore import open_configured_store
from vectorsvc.vectorstore.base import CollectionSpec, Filter, MatchValue, PointRecord
from vectorsvc.vectorstore.edge import EdgeVectorStore

SPEC = CollectionSpec(name="docs", dimension=4, tenant_key="_tenant", keyword_fields=())
TENANT = Filter(must=(MatchValue(key="_tenant", value="t"),))


def _points() -> list[PointRecord]:
    rng = np.random.default_rng(0)
    return [
        PointRecord(
            id=f"00000000-0000-0000-0000-{i:012d}",
            vector=rng.standard_normal(4).astype(np.float32),
            payload={"_tenant": "t"},
        )
        for i in range(5)
    ]


def _from_another_thread(store: EdgeVectorStore, name: str) -> bool:
    out: list[bool] = []
    thread = threading.Thread(target=lambda: out.append(store.search_inline(name)))
    thread.start()
    thread.join(10)
    return out[0]


def test_inline_once_the_shard_is_open_and_never_while_the_lock_is_held(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path) as store:
        assert not store.search_inline("docs")  # no such collection
        store.ensure_collection(SPEC)
        store.upsert("docs", _points())
        store.set_alias("docs-live", "docs")
        assert store.search_inline("docs")
        assert store.search_inline("docs-live")
        with store._lock:  # another thread may be opening a shard under it
            assert not _from_another_thread(store, "docs")
        assert _from_another_thread(store, "docs")
    with EdgeVectorStore(tmp_path) as store:
        assert not store.search_inline("docs")  # known, but its shard is not open yet
        assert len(store.search("docs", np.ones(4, np.float32), filter=TENANT, limit=3)) == 3
        assert store.search_inline("docs")
    assert not store.search_inline("docs")  # closed


def test_the_service_opens_its_store_with_the_configured_search_threads(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).edge_search_threads == 1
    for configured, expected in ((1, 1), (3, 3), (0, None)):  # 0: Qdrant Edge's default
        settings = Settings(data_dir=tmp_path / str(configured), edge_search_threads=configured)
        store = open_configured_store(settings)
        assert isinstance(store, EdgeVectorStore)
        try:
            store.ensure_collection(SPEC)
            store.upsert("docs", _points())
            assert store._edge_config(SPEC).max_search_threads == expected
            hits = store.search("docs", np.ones(4, np.float32), filter=TENANT, limit=10)
            assert len(hits) == 5
        finally:
            store.close()
