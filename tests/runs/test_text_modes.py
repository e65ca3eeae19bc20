"""execute / index / search / delete on the real MiniLM and the real Qdrant Edge engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embedders.base import Embedder
from tests.harness import Service, running_service
from vectorsvc.config import Settings
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"

DOCS = [
    ("cats", "Cats are small domesticated felines that purr and chase mice.", "animals", 2019),
    (
        "rust",
        "The Rust compiler enforces memory safety through ownership and borrowing.",
        "code",
        2021,
    ),
    (
        "bread",
        "Knead the dough, let it rise overnight, then bake the sourdough loaf.",
        "food",
        2015,
    ),
    ("qdrant", "Qdrant is a vector database for similarity search over embeddings.", "code", 2023),
    ("tides", "Ocean tides are caused by the gravitational pull of the moon.", "science", 2010),
]


def items(docs: list[tuple[str, str, str, int]] = DOCS) -> list[dict[str, Any]]:
    return [
        {"id": i, "text": t, "metadata": {"topic": topic, "year": year}}
        for i, t, topic, year in docs
    ]


async def index(service: Service, key: str, scope: str, payload: list[dict[str, Any]]) -> Any:
    r = await service.run(
        key, {"model": MODEL, "mode": "index", "scope": scope, "input": {"items": payload}}
    )
    assert r.status_code == 200, r.text
    return r.json()["output"]


async def search(
    service: Service, key: str, scope: str, text: str, **params: Any
) -> list[dict[str, Any]]:
    r = await service.run(
        key,
        {
            "model": MODEL,
            "mode": "search",
            "scope": scope,
            "input": {"text": text},
            "params": params,
        },
    )
    assert r.status_code == 200, r.text
    hits: list[dict[str, Any]] = r.json()["output"]["hits"]
    return hits


async def test_execute_returns_normalised_embeddings(service: Service, api_key: str) -> None:
    r = await service.run(
        api_key, {"model": MODEL, "input": {"texts": ["a cat", "a kitten", "tax law"]}}
    )
    assert r.status_code == 200, r.text
    vectors = np.array(r.json()["output"]["embeddings"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert r.json()["usage"]["items"] == 3


async def test_search_ranks_the_relevant_document_first(service: Service, api_key: str) -> None:
    out = await index(service, api_key, "kb", items())
    assert out["ids"] == [d[0] for d in DOCS]
    assert out["counts"] == {
        "received": 5,
        "indexed": 5,
        "created": 5,
        "updated": 0,
        "skipped": 0,
    }
    assert out["collection"] == "vs__all-minilm-l6-v2__r2"
    cases = {
        "which database stores vectors for nearest neighbour search?": "qdrant",
        "why does the sea level rise and fall each day": "tides",
        "my kitten keeps hunting rodents": "cats",
        "how do I make bread at home": "bread",
        "borrow checker and ownership": "rust",
    }
    for query, expected in cases.items():
        # Dense: these are paraphrases (tests/runs/test_retrieval.py covers the others).
        hits = await search(service, api_key, "kb", query, top_k=3, retrieval="dense")
        assert hits[0]["id"] == expected, (query, hits)
        assert hits[0]["score"] > hits[1]["score"]
        assert hits[0]["text"] == {d[0]: d[1] for d in DOCS}[expected]
        assert "topic" in hits[0]["metadata"]


async def test_indexing_an_id_twice_leaves_one_point(service: Service, api_key: str) -> None:
    await index(service, api_key, "kb", items())
    out = await index(
        service, api_key, "kb", [{"id": "cats", "text": "Dogs are loyal companions who bark."}]
    )
    assert out["counts"]["created"] == 0
    assert out["counts"]["updated"] == 1
    hits = await search(service, api_key, "kb", "loyal barking dog", top_k=10)
    assert [h["id"] for h in hits].count("cats") == 1
    assert len(hits) == len(DOCS)
    assert hits[0]["id"] == "cats"
    assert hits[0]["text"].startswith("Dogs")


async def test_search_filters_on_metadata(service: Service, api_key: str) -> None:
    await index(service, api_key, "kb", items())
    hits = await search(service, api_key, "kb", "anything", top_k=10, filter={"topic": "code"})
    assert sorted(h["id"] for h in hits) == ["qdrant", "rust"]
    hits = await search(
        service, api_key, "kb", "x", top_k=10, filter={"topic": {"any": ["food", "science"]}}
    )
    assert sorted(h["id"] for h in hits) == ["bread", "tides"]
    hits = await search(
        service, api_key, "kb", "x", top_k=10, filter={"year": {"gte": 2015, "lt": 2021}}
    )
    assert sorted(h["id"] for h in hits) == ["bread", "cats"]
    hits = await search(
        service, api_key, "kb", "x", top_k=10, filter={"topic": "code", "year": {"gt": 2022}}
    )
    assert [h["id"] for h in hits] == ["qdrant"]
    hits = await search(service, api_key, "kb", "x", top_k=2)
    assert len(hits) == 2


async def test_delete_by_id_and_by_filter_remove_exactly(service: Service, api_key: str) -> None:
    await index(service, api_key, "kb", items())
    await index(service, api_key, "other", items())
    r = await service.run(
        api_key,
        {"model": MODEL, "mode": "delete", "scope": "kb", "input": {"ids": ["cats", "nope"]}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["output"]["deleted"] == 1
    remaining = {h["id"] for h in await search(service, api_key, "kb", "x", top_k=10)}
    assert remaining == {"rust", "bread", "qdrant", "tides"}
    r = await service.run(
        api_key,
        {"model": MODEL, "mode": "delete", "scope": "kb", "input": {"filter": {"topic": "code"}}},
    )
    assert r.json()["output"]["deleted"] == 2
    remaining = {h["id"] for h in await search(service, api_key, "kb", "x", top_k=10)}
    assert remaining == {"bread", "tides"}
    # The other scope lost nothing.
    other = {h["id"] for h in await search(service, api_key, "other", "x", top_k=10)}
    assert other == {d[0] for d in DOCS}


async def test_delete_needs_ids_or_a_non_empty_filter(service: Service, api_key: str) -> None:
    for bad in ({}, {"ids": ["a"], "filter": {"t": 1}}, {"filter": {}}):
        r = await service.run(
            api_key, {"model": MODEL, "mode": "delete", "scope": "kb", "input": bad}
        )
        assert r.status_code == 422, (bad, r.text)


async def test_search_of_an_empty_scope_returns_no_hits(service: Service, api_key: str) -> None:
    assert await search(service, api_key, "never-indexed", "hello") == []


async def test_same_scope_in_two_workspaces_is_two_namespaces(service: Service) -> None:
    key_a = service.new_key("team-a")
    key_b = service.new_key("team-b")
    await index(service, key_a, "shared-name", items(DOCS[:2]))
    await index(service, key_b, "shared-name", items(DOCS[2:]))
    hits_a = {h["id"] for h in await search(service, key_a, "shared-name", "x", top_k=10)}
    hits_b = {h["id"] for h in await search(service, key_b, "shared-name", "x", top_k=10)}
    assert hits_a == {"cats", "rust"}
    assert hits_b == {"bread", "qdrant", "tides"}
    # B deleting "cats" in its own namespace cannot touch A's point.
    r = await service.run(
        key_b,
        {"model": MODEL, "mode": "delete", "scope": "shared-name", "input": {"ids": ["cats"]}},
    )
    assert r.json()["output"]["deleted"] == 0
    assert {h["id"] for h in await search(service, key_a, "shared-name", "x")} == hits_a


async def test_bad_index_input_stores_nothing(service: Service, api_key: str) -> None:
    await index(service, api_key, "kb", items(DOCS[:1]))
    bad_batches: list[list[dict[str, Any]]] = [
        [{"id": "ok", "text": "fine"}, {"id": "ok", "text": "duplicate id"}],
        [{"id": "ok", "text": "fine"}, {"id": "blank", "text": "   "}],
        [{"id": "ok", "text": "fine", "metadata": {"bad key!": 1}}],
        [{"id": "ok", "text": "x" * 1_000_001}],
    ]
    for batch in bad_batches:
        r = await service.run(
            api_key, {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": batch}}
        )
        assert r.status_code == 422, (batch, r.text)
    assert {h["id"] for h in await search(service, api_key, "kb", "x")} == {"cats"}


async def test_data_survives_closing_and_reopening(
    settings: Settings, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        await index(svc, key, "kb", items())
    async with running_service(settings, embedder_loader) as svc:
        hits = await search(svc, key, "kb", "vector database for embeddings", top_k=10)
        assert len(hits) == len(DOCS)
        assert hits[0]["id"] == "qdrant"


async def test_unchanged_items_are_skipped_and_changed_ones_re_embedded(
    service: Service, api_key: str
) -> None:
    first = await service.run(
        api_key, {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": items()}}
    )
    assert first.json()["usage"]["items"] == 5
    again = await service.run(
        api_key, {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": items()}}
    )
    body = again.json()
    assert body["output"]["counts"]["skipped"] == 5
    assert body["output"]["counts"]["indexed"] == 0
    assert body["usage"] == {"items": 0, "chunks": 0, "queries": 0, "skipped": 5, "cost": "0"}
    changed = items()
    changed[0]["metadata"]["topic"] = "pets"  # metadata counts as content
    changed[1]["text"] = "Rust has no garbage collector."
    third = (
        await service.run(
            api_key, {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": changed}}
        )
    ).json()
    assert third["output"]["counts"]["skipped"] == 3
    assert third["output"]["counts"]["indexed"] == 2
    assert third["output"]["counts"]["updated"] == 2
    hits = await search(service, api_key, "kb", "garbage collection", top_k=1)
    assert hits[0]["id"] == "rust"
    assert hits[0]["text"] == "Rust has no garbage collector."
    pets = await search(service, api_key, "kb", "x", top_k=5, filter={"topic": "pets"})
    assert [h["id"] for h in pets] == ["cats"]
    # The same content in another scope is a different namespace: not skipped there.
    other = await service.run(
        api_key, {"model": MODEL, "mode": "index", "scope": "kb2", "input": {"items": items()}}
    )
    assert other.json()["output"]["counts"]["skipped"] == 0
