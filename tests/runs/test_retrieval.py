"""Search retrievals through the API: dense, keyword (BM25) and hybrid (fused by RRF or
DBSF), on the real MiniLM and the real Qdrant Edge engine; the fallback for a collection
without keyword vectors; the 422s for image models and for a fusion without hybrid."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from tests.harness import Service
from vectorsvc.points import namespaces

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
DOCS = [
    ("e1", "Error E-2231: the pump stopped because the inlet valve was closed.", "pumps"),
    ("e2", "Error E-7719: the pump stopped because the outlet pipe froze.", "pumps"),
    ("e3", "Error E-5102: the pump stopped because the motor overheated.", "motors"),
    ("cats", "Cats are small domesticated felines that purr and chase mice.", "animals"),
    ("tides", "Ocean tides are caused by the gravitational pull of the moon.", "science"),
]


async def index(service: Service, key: str, scope: str = "kb") -> None:
    items = [{"id": i, "text": t, "metadata": {"topic": topic}} for i, t, topic in DOCS]
    r = await service.run(
        key, {"model": MODEL, "mode": "index", "scope": scope, "input": {"items": items}}
    )
    assert r.status_code == 200, r.text


async def search(
    service: Service, key: str, text: str, *, status: int = 200, **params: Any
) -> dict[str, Any]:
    r = await service.run(
        key,
        {
            "model": MODEL,
            "mode": "search",
            "scope": "kb",
            "input": {"text": text},
            "params": params,
        },
    )
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()["output"] if status == 200 else r.json()["error"]
    return out


async def test_keyword_finds_a_code_and_scores_by_bm25(service: Service, api_key: str) -> None:
    await index(service, api_key)
    out = await search(service, api_key, "E-7719", retrieval="keyword")
    assert out["retrieval"] == "keyword"
    hits = out["hits"]
    assert hits[0]["id"] == "e2"
    # BM25: the rare code outweighs the 'e' every error shares; texts without a query term
    # are not candidates at all.
    assert {h["id"] for h in hits} == {"e1", "e2", "e3"}
    assert hits[0]["score"] > 1.0 > hits[1]["score"] > 0
    assert hits[0]["text"] == DOCS[1][1] and hits[0]["metadata"] == {"topic": "pumps"}


async def test_hybrid_is_the_default_and_fuses_both(service: Service, api_key: str) -> None:
    await index(service, api_key)
    out = await search(service, api_key, "E-7719", top_k=5)
    assert out["retrieval"] == "hybrid"
    assert out["hits"][0]["id"] == "e2"
    # Fused by DBSF (the default): first in both lists scores above 1 (about 0.5 to 1 from
    # each list); RRF would give at most 2/60.
    assert out["hits"][0]["score"] > 1
    # A paraphrase sharing no word with its text still comes back through the dense side.
    out = await search(service, api_key, "felines hunting rodents", top_k=5)
    assert out["retrieval"] == "hybrid" and out["hits"][0]["id"] == "cats"
    dense = await search(service, api_key, "E-7719", retrieval="dense", top_k=5)
    assert dense["retrieval"] == "dense"
    assert all(-1 <= h["score"] <= 1 for h in dense["hits"])


def dbsf(*lists: list[dict[str, Any]]) -> dict[str, float]:
    """Distribution-Based Score Fusion of API hit lists: each list's scores mapped by
    (score - (mean - 3 sd)) / (6 sd), sd the sample standard deviation, then summed."""
    fused: dict[str, float] = {}
    for hits in lists:
        scores = np.array([h["score"] for h in hits])
        low, sd = scores.mean() - 3 * scores.std(ddof=1), scores.std(ddof=1)
        for h in hits:
            fused[h["id"]] = fused.get(h["id"], 0.0) + float((h["score"] - low) / (6 * sd))
    return fused


async def test_hybrid_fused_by_dbsf_sums_each_lists_normalized_scores(
    service: Service, api_key: str
) -> None:
    await index(service, api_key)
    text = "pump stopped because the valve was closed"
    out = await search(service, api_key, text, fusion="dbsf")
    assert out["retrieval"] == "hybrid"
    # Every text of the scope is a dense candidate; those sharing a word, keyword ones.
    dense = (await search(service, api_key, text, retrieval="dense"))["hits"]
    keyword = (await search(service, api_key, text, retrieval="keyword"))["hits"]
    assert len(dense) == len(DOCS) and 1 < len(keyword) < len(DOCS)
    want = dbsf(dense, keyword)
    assert {h["id"]: h["score"] for h in out["hits"]} == pytest.approx(want, rel=1e-4)
    assert [h["id"] for h in out["hits"]][0] == max(want, key=want.__getitem__) == "e1"
    assert out["hits"][0]["score"] > 1  # not an RRF score (at most 2/60)
    rrf = await search(service, api_key, text, retrieval="hybrid", fusion="rrf")
    default = await search(service, api_key, text)  # dbsf is the default
    assert {h["id"]: h["score"] for h in default["hits"]} == pytest.approx(want, rel=1e-4)
    # RRF scores: 1/(60 + rank) per list, rank from 0: first in both lists is 2/60.
    assert rrf["hits"][0]["score"] == pytest.approx(2 / 60, rel=1e-5)


@pytest.mark.parametrize(
    ("retrieval", "fusion"),
    [("dense", None), ("keyword", None), ("hybrid", None), ("hybrid", "dbsf")],
)
async def test_filter_and_score_threshold_hold_in_every_retrieval(
    service: Service, api_key: str, retrieval: str, fusion: str | None
) -> None:
    await index(service, api_key)
    text = "pump stopped error"
    how: dict[str, Any] = {"retrieval": retrieval} | ({"fusion": fusion} if fusion else {})
    out = await search(service, api_key, text, **how, filter={"topic": "pumps"})
    assert {h["id"] for h in out["hits"]} == {"e1", "e2"}
    scores = [h["score"] for h in (await search(service, api_key, text, **how))["hits"]]
    # Between the best score and the next lower one (fused ranks can tie).
    below = next(i for i, score in enumerate(scores) if score < scores[0])
    threshold = (scores[0] + scores[below]) / 2
    kept = await search(service, api_key, text, **how, score_threshold=threshold)
    assert [h["score"] for h in kept["hits"]] == scores[:below]


async def test_keyword_query_of_stopwords_finds_nothing(service: Service, api_key: str) -> None:
    await index(service, api_key)
    out = await search(service, api_key, "the of and", retrieval="keyword")
    assert out == {"hits": [], "retrieval": "keyword"}


async def test_a_collection_without_keyword_vectors_answers_dense(
    service: Service, api_key: str
) -> None:
    """A collection created before keyword vectors (as a release stored earlier is): keyword
    and hybrid searches are served by dense retrieval, and the output says so."""
    state = service.app.state.vectorsvc
    model = state.registry.get(MODEL)
    state.store.ensure_collection(replace(namespaces.collection_spec(model), sparse=False))
    await index(service, api_key)
    for how in ({"retrieval": "keyword"}, {"retrieval": "hybrid"}, {"fusion": "dbsf"}):
        out = await search(service, api_key, "which errors come from the pump?", **how)
        assert out["retrieval"] == "dense"
        assert out["hits"] and all(-1 <= h["score"] <= 1 for h in out["hits"])


async def test_an_empty_scope_answers_with_the_retrieval_asked(
    service: Service, api_key: str
) -> None:
    out = await search(service, api_key, "anything", retrieval="keyword")
    assert out == {"hits": [], "retrieval": "keyword"}


async def test_unknown_retrieval_is_refused(service: Service, api_key: str) -> None:
    error = await search(service, api_key, "q", status=422, retrieval="bm25")
    assert error["field"] == "params.retrieval"
    assert all(name in error["message"] for name in ("hybrid", "dense", "keyword"))


@pytest.mark.parametrize("retrieval", ["dense", "keyword"])
async def test_a_fusion_without_hybrid_retrieval_is_refused(
    service: Service, api_key: str, retrieval: str
) -> None:
    await index(service, api_key)
    for fusion in ("rrf", "dbsf"):
        error = await search(service, api_key, "q", status=422, retrieval=retrieval, fusion=fusion)
        assert (error["code"], error["field"]) == ("fusion_needs_hybrid", "params.fusion")
        assert "hybrid" in error["message"] and retrieval in error["message"]


@pytest.mark.parametrize("fusion", ["dbfs", "RRF", "", 60, None])
async def test_unknown_fusion_is_refused(service: Service, api_key: str, fusion: Any) -> None:
    error = await search(service, api_key, "q", status=422, fusion=fusion)
    assert (error["code"], error["field"]) == ("validation_error", "params.fusion")
    if isinstance(fusion, str):
        assert "rrf" in error["message"] and "dbsf" in error["message"]
    else:
        assert "must be a string" in error["message"]


@pytest.mark.parametrize("model", ["image-similarity", "clip-vit-b-32"])
@pytest.mark.parametrize("retrieval", ["keyword", "hybrid"])
async def test_models_that_embed_images_refuse_keyword_and_hybrid(
    service: Service, api_key: str, model: str, retrieval: str
) -> None:
    r = await service.run(
        api_key,
        {
            "model": model,
            "mode": "search",
            "scope": "kb",
            "input": {"image": {"media_ref": "media_0123456789abcdef0123456789abcdef"}},
            "params": {"retrieval": retrieval},
        },
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "params.retrieval"
    assert "dense vectors only" in error["message"] and "text-only" in error["message"]


@pytest.mark.parametrize("model", ["image-similarity", "clip-vit-b-32"])
async def test_models_that_embed_images_refuse_a_fusion(
    service: Service, api_key: str, model: str
) -> None:
    r = await service.run(
        api_key,
        {
            "model": model,
            "mode": "search",
            "scope": "kb",
            "input": {"image": {"media_ref": "media_0123456789abcdef0123456789abcdef"}},
            "params": {"fusion": "dbsf"},
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "params.fusion"


async def test_keyword_scores_of_a_scope_ignore_other_tenants(
    service: Service, api_key: str
) -> None:
    """IDF is taken over the scope's own points: another workspace filling the same
    collection with pump texts changes neither the scores nor the order in this one."""
    await index(service, api_key)
    before = await search(service, api_key, "pump motor overheated", retrieval="keyword")
    other = service.new_key("globex")
    items = [{"id": f"p{i}", "text": f"pump motor overheated again, unit {i}"} for i in range(40)]
    r = await service.run(
        other, {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": items}}
    )
    assert r.status_code == 200, r.text
    after = await search(service, api_key, "pump motor overheated", retrieval="keyword")
    assert [h["id"] for h in after["hits"]] == [h["id"] for h in before["hits"]]
    assert [h["score"] for h in after["hits"]] == pytest.approx(
        [h["score"] for h in before["hits"]], rel=1e-5
    )
