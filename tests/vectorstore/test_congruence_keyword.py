"""Keyword (BM25) and hybrid search on every backend: Edge, qdrant-client local mode and
(when VECTORSVC_TEST_QDRANT_URL is set) a real Qdrant server, against BM25, RRF and DBSF
worked out here from the stored vectors, and against each other."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.vectorstore.test_congruence import (
    SERVER_URL_ENV,
    TENANT,
    Harness,
    _drop_remote,
    _open,
    h,
)
from vectorsvc.points.sparse import document_vector, query_vector
from vectorsvc.vectorstore import (
    CollectionSpec,
    Filter,
    HasIds,
    MatchValue,
    PointRecord,
    ScoredPoint,
    SparseVector,
    VectorStore,
    VectorStoreError,
)
from vectorsvc.vectorstore.edge import EdgeVectorStore
from vectorsvc.vectorstore.remote import RemoteVectorStore

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
__all__ = ["h"]  # the backend fixture, shared with the main suite

DIM = 8
TEXTS = [
    "BRCA1 mutations raise the risk of breast cancer",
    "Cats purr when they are content and sleep in the sun",
    "The vector database answers nearest neighbour queries over embeddings",
    "Cancer therapy with monoclonal antibodies against tumour cells",
    "Breast cancer screening with mammography every two years",
    "Dogs and cats can live together peacefully in one house",
    "Error code XJ-4471 means the disk controller lost power",
    "Sourdough bread needs a starter, flour, water and a long rise",
    "The moon pulls the oceans and makes the tides rise and fall",
    "A database index speeds up queries over large tables of records",
    "Cats chase mice; mice chase cheese; cheese chases nobody at all",
    "Qdrant stores dense and sparse vectors beside each other",
]
IDS = [str(uuid.UUID(int=1000 + i)) for i in range(len(TEXTS))]
VECTORS = np.random.default_rng(5).standard_normal((len(TEXTS), DIM)).astype(np.float32)
PAYLOADS = [{TENANT: "ws1/a" if i % 4 else "ws2/a", "n": i} for i in range(len(TEXTS))]
QUERIES = ["breast cancer", "cats", "database queries", "XJ-4471 disk", "rise"]
MINE = Filter((MatchValue(TENANT, "ws1/a"),))


def records() -> list[PointRecord]:
    return [
        PointRecord(id=i, payload=p, vector=v, sparse=document_vector(t))
        for i, p, v, t in zip(IDS, PAYLOADS, VECTORS, TEXTS, strict=True)
    ]


def keyword_spec(name: str, *, sparse: bool = True) -> CollectionSpec:
    return CollectionSpec(name=name, dimension=DIM, tenant_key=TENANT, sparse=sparse)


def loaded(h: Harness, base: str = "kw") -> str:
    name = h.name(base)
    h.store.ensure_collection(keyword_spec(name))
    h.store.upsert(name, records())
    return name


def expected_bm25(query: SparseVector, selected: set[str], corpus: set[str]) -> dict[str, float]:
    """BM25 of the `selected` points, IDF over the `corpus` points, as Qdrant's IDF modifier
    computes it: ln(1 + (N - n + 0.5) / (n + 0.5))."""
    docs = {
        i: dict(zip(s.indices, s.values, strict=True))
        for i, s in zip(IDS, map(document_vector, TEXTS), strict=True)
    }
    population = [w for i, w in docs.items() if i in corpus]
    scores: dict[str, float] = {}
    for point_id, weights in docs.items():
        shared = [t for t in query.indices if t in weights]
        if point_id not in selected or not shared:
            continue
        score = 0.0
        for term in shared:
            n = sum(term in w for w in population)
            score += math.log(1 + (len(population) - n + 0.5) / (n + 0.5)) * weights[term]
        scores[point_id] = score
    return scores


def rrf(lists: list[list[ScoredPoint]], k: int) -> dict[str, float]:
    fused: dict[str, float] = {}
    for ranked in lists:
        for rank, hit in enumerate(ranked):
            fused[hit.id] = fused.get(hit.id, 0.0) + 1.0 / (k + rank)
    return fused


def dbsf(lists: list[list[ScoredPoint]]) -> dict[str, float]:
    """Distribution-Based Score Fusion: each list's scores mapped by (score - (mean - 3 sd))
    / (6 sd), sd the sample standard deviation (0.5 for a single hit or equal scores),
    summed over the lists."""
    fused: dict[str, float] = {}
    for ranked in lists:
        scores = [hit.score for hit in ranked]
        sd = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
        low = float(np.mean(scores)) - 3 * sd if scores else 0.0
        for hit in ranked:
            normal = 0.5 if sd == 0 else (hit.score - low) / (6 * sd)
            fused[hit.id] = fused.get(hit.id, 0.0) + normal
    return fused


def by_id(hits: list[ScoredPoint]) -> dict[str, float]:
    return {hit.id: hit.score for hit in hits}


@pytest.mark.parametrize("text", QUERIES)
@pytest.mark.parametrize(
    ("flt", "idf_scope"),
    [(Filter(), None), (MINE, None), (MINE, MINE)],
    ids=["everything", "tenant", "tenant-idf"],
)
def test_keyword_search_is_bm25(
    h: Harness, text: str, flt: Filter, idf_scope: Filter | None
) -> None:
    """IDF over the whole collection (every tenant's points), or over `idf_scope`'s."""
    name = loaded(h)
    mine = {i for i, p in zip(IDS, PAYLOADS, strict=True) if p[TENANT] == "ws1/a"}
    selected = mine if flt.must else set(IDS)
    want = expected_bm25(query_vector(text), selected, mine if idf_scope else set(IDS))
    hits = h.store.search_keyword(
        name, query_vector(text), filter=flt, limit=len(TEXTS), idf_scope=idf_scope
    )
    assert want, "every query shares a term with some text"
    assert by_id(hits) == pytest.approx(want, rel=1e-4)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert all(hit.payload == PAYLOADS[IDS.index(hit.id)] for hit in hits)
    top = h.store.search_keyword(name, query_vector(text), filter=flt, limit=2, idf_scope=idf_scope)
    assert [hit.id for hit in top] == [hit.id for hit in hits[:2]]


def test_hybrid_keyword_side_uses_the_idf_scope(h: Harness) -> None:
    name = loaded(h)
    sparse = query_vector("cancer cats")  # ranked apart by the two IDFs
    scores: list[dict[str, float]] = []
    for idf_scope in (None, MINE):
        keyword = h.store.search_keyword(
            name, sparse, filter=MINE, limit=len(TEXTS), idf_scope=idf_scope
        )
        dense = h.store.search(name, VECTORS[6], filter=MINE, limit=len(TEXTS))
        hits = h.store.search_hybrid(
            name,
            VECTORS[6],
            sparse,
            filter=MINE,
            limit=len(TEXTS),
            candidates=len(TEXTS),
            rrf_k=60,
            idf_scope=idf_scope,
        )
        assert by_id(hits) == pytest.approx(rrf([dense, keyword], 60), rel=1e-5)
        scores.append(by_id(hits))
    assert scores[0] != pytest.approx(scores[1], rel=1e-5)  # the keyword ranks differ


@pytest.mark.parametrize("text", QUERIES)
@pytest.mark.parametrize("k", [2, 60])
def test_hybrid_search_fuses_dense_and_keyword_by_rrf(h: Harness, text: str, k: int) -> None:
    name = loaded(h)
    query = VECTORS[3] + 0.5 * VECTORS[7]
    sparse = query_vector(text)
    dense = h.store.search(name, query, filter=MINE, limit=4)
    keyword = h.store.search_keyword(name, sparse, filter=MINE, limit=4)
    hits = h.store.search_hybrid(name, query, sparse, filter=MINE, limit=4, candidates=4, rrf_k=k)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert all(hit.payload[TENANT] == "ws1/a" for hit in hits)
    fused = rrf([dense, keyword], k)
    assert len(hits) == 4
    assert by_id(hits) == pytest.approx({i: fused[i] for i in by_id(hits)}, rel=1e-5)
    assert min(by_id(hits).values()) >= sorted(fused.values(), reverse=True)[3] - 1e-6
    # limit cuts the fused list; each candidate list holds at least `limit` hits
    wide = h.store.search_hybrid(name, query, sparse, filter=MINE, limit=9, candidates=4, rrf_k=k)
    assert {hit.id for hit in wide} == {
        hit.id for hit in h.store.search(name, query, filter=MINE, limit=9)
    }


@pytest.mark.parametrize("text", QUERIES)
@pytest.mark.parametrize("idf_scope", [None, MINE], ids=["shard-idf", "tenant-idf"])
def test_hybrid_search_fuses_dense_and_keyword_by_dbsf(
    h: Harness, text: str, idf_scope: Filter | None
) -> None:
    name = loaded(h)
    query = VECTORS[3] + 0.5 * VECTORS[7]
    sparse = query_vector(text)
    # Every point of the tenant in the dense list, those sharing a term in the keyword one.
    dense = h.store.search(name, query, filter=MINE, limit=9)
    keyword = h.store.search_keyword(name, sparse, filter=MINE, limit=9, idf_scope=idf_scope)
    hits = h.store.search_hybrid(
        name,
        query,
        sparse,
        filter=MINE,
        limit=9,
        candidates=9,
        rrf_k=60,
        idf_scope=idf_scope,
        fusion="dbsf",
    )
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert all(hit.payload == PAYLOADS[IDS.index(hit.id)] for hit in hits)
    assert by_id(hits) == pytest.approx(dbsf([dense, keyword]), rel=1e-5)
    # Not the RRF scores: the fusion asked for is the one that ran.
    assert by_id(hits) != pytest.approx(rrf([dense, keyword], 60), rel=1e-3)


def test_dbsf_of_a_single_keyword_hit_scores_it_one_half(h: Harness) -> None:
    """A list of one hit has no spread: its hit gets 0.5 (what both engines do)."""
    name = loaded(h)
    only = Filter((*MINE.must, HasIds((IDS[5], IDS[6], IDS[7]))))
    sparse = query_vector("XJ-4471")  # in IDS[6]'s text alone
    dense = h.store.search(name, VECTORS[1], filter=only, limit=3)
    hits = h.store.search_hybrid(
        name, VECTORS[1], sparse, filter=only, limit=3, candidates=3, rrf_k=60, fusion="dbsf"
    )
    assert by_id(hits) == pytest.approx(dbsf([dense, [ScoredPoint(IDS[6], 1.0, {})]]), rel=1e-5)
    assert by_id(hits)[IDS[6]] == pytest.approx(dbsf([dense])[IDS[6]] + 0.5, rel=1e-5)


def test_keyword_and_hybrid_never_leak_another_tenant(h: Harness) -> None:
    name = loaded(h)
    foreign = {i for i, p in zip(IDS, PAYLOADS, strict=True) if p[TENANT] == "ws2/a"}
    # "BRCA1" is only in a ws2/a text: the tenant filter must keep it out.
    assert IDS[0] in foreign
    assert h.store.search_keyword(name, query_vector("BRCA1"), filter=MINE, limit=10) == []
    hits = h.store.search_hybrid(
        name, VECTORS[0], query_vector("BRCA1"), filter=MINE, limit=10, candidates=10, rrf_k=60
    )
    assert hits and not ({hit.id for hit in hits} & foreign)
    only = Filter((*MINE.must, HasIds((IDS[5], IDS[10]))))
    assert {
        hit.id for hit in h.store.search_keyword(name, query_vector("cats"), filter=only, limit=10)
    } == {IDS[5], IDS[10]}


def test_a_query_of_stopwords_finds_nothing_by_keyword(h: Harness) -> None:
    name = loaded(h)
    empty = query_vector("the of and")
    assert empty.indices == ()
    assert h.store.search_keyword(name, empty, filter=MINE, limit=10) == []
    hits = h.store.search_hybrid(
        name, VECTORS[1], empty, filter=MINE, limit=3, candidates=10, rrf_k=60
    )
    assert [hit.id for hit in hits] == [
        hit.id for hit in h.store.search(name, VECTORS[1], filter=MINE, limit=3)
    ]


def test_collection_without_keyword_vectors(h: Harness) -> None:
    """A collection made before keyword vectors: writes carrying them still land (dense
    only), keyword queries are refused, and it says it has none."""
    name = h.name("old")
    h.store.ensure_collection(keyword_spec(name, sparse=False))
    h.store.upsert(name, records())
    assert h.store.count(name, filter=Filter()) == len(TEXTS)
    assert not h.store.has_sparse(name)
    assert h.store.search(name, VECTORS[2], filter=Filter(), limit=1)[0].id == IDS[2]
    with pytest.raises(VectorStoreError):
        h.store.search_keyword(name, query_vector("cats"), filter=Filter(), limit=3)
    with pytest.raises(VectorStoreError):
        h.store.search_hybrid(
            name, VECTORS[2], query_vector("cats"), filter=Filter(), limit=3, candidates=5, rrf_k=60
        )
    # ensure_collection with a spec that asks for them does not change a stored collection
    h.store.ensure_collection(keyword_spec(name, sparse=True))
    assert not h.store.has_sparse(name)
    new = loaded(h, "new")
    assert h.store.has_sparse(new)


def test_keyword_and_hybrid_backends_are_congruent(tmp_path: Path) -> None:
    kinds = ["edge", "memory"] + (["server"] if os.environ.get(SERVER_URL_ENV) else [])
    opened: list[tuple[VectorStore, Any]] = [_open(kind, tmp_path) for kind in kinds]
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    name = f"{prefix}kw"
    try:
        for store, _ in opened:
            store.ensure_collection(keyword_spec(name))
            store.upsert(name, records())
        (reference, _), *others = opened
        for i, text in enumerate(QUERIES):
            sparse = query_vector(text)
            for flt in (Filter(), MINE):
                want_kw = reference.search_keyword(name, sparse, filter=flt, limit=5)
                want_hy = reference.search_hybrid(
                    name, VECTORS[i], sparse, filter=flt, limit=5, candidates=8, rrf_k=60
                )
                want_db = reference.search_hybrid(
                    name,
                    VECTORS[i],
                    sparse,
                    filter=flt,
                    limit=5,
                    candidates=8,
                    rrf_k=60,
                    fusion="dbsf",
                )
                for other, _ in others:
                    got_kw = other.search_keyword(name, sparse, filter=flt, limit=5)
                    assert by_id(got_kw) == pytest.approx(by_id(want_kw), rel=1e-4)
                    if len({round(hit.score, 4) for hit in want_kw}) < len(want_kw):
                        continue  # tied keyword scores: each engine may rank the tie its way
                    got_hy = other.search_hybrid(
                        name, VECTORS[i], sparse, filter=flt, limit=5, candidates=8, rrf_k=60
                    )
                    assert sorted(hit.score for hit in got_hy) == pytest.approx(
                        sorted(hit.score for hit in want_hy), rel=1e-5
                    )
                    got_db = other.search_hybrid(
                        name,
                        VECTORS[i],
                        sparse,
                        filter=flt,
                        limit=5,
                        candidates=8,
                        rrf_k=60,
                        fusion="dbsf",
                    )
                    assert by_id(got_db) == pytest.approx(by_id(want_db), rel=1e-4)
    finally:
        for store, teardown in opened:
            if isinstance(store, RemoteVectorStore) and store.client.init_options.get("url"):
                _drop_remote(store.client, prefix)
            teardown()


def test_edge_keeps_keyword_vectors_across_reopen(tmp_path: Path) -> None:
    root = tmp_path / "edge"
    with EdgeVectorStore(root) as store:
        store.ensure_collection(keyword_spec("kw"))
        store.upsert("kw", records())
        store.ensure_collection(keyword_spec("old", sparse=False))
    # A spec.json written before keyword vectors existed has no "sparse" key.
    spec_path = root / "collections" / "old" / "spec.json"
    spec = json.loads(spec_path.read_text())
    del spec["sparse"]
    spec_path.write_text(json.dumps(spec))
    with EdgeVectorStore(root) as store:
        assert store.has_sparse("kw") and not store.has_sparse("old")
        hits = store.search_keyword("kw", query_vector("XJ-4471"), filter=Filter(), limit=3)
        assert [hit.id for hit in hits] == [IDS[6]]
