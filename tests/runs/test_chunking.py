"""Long texts: chunked indexing, one hit per item with a highlight, chunk-aware re-index,
dedupe, delete and Knowledge Bases reads; on the real MiniLM and the real Qdrant Edge."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Service
from vectorsvc.points import namespaces
from vectorsvc.points.chunks import read_item_text
from vectorsvc.workspaces.service import find_workspace

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
PRICE = 200  # micro-credits per chunk indexed (models.yaml)

# Paragraphs on distinct topics, each about 50 word pieces: 8 of them need two chunks.
TOPICS = [
    "Sourdough bread rises slowly because wild yeast and lactic acid bacteria ferment the "
    "dough; bakers knead it, fold it, proof it overnight in a cool room and bake the loaf "
    "in a hot Dutch oven until the crust is dark brown, crisp and crackling as it cools.",
    "The Rust compiler checks ownership and borrowing at compile time, so a program cannot "
    "use memory after freeing it or share mutable state between threads without a lock; "
    "lifetimes tell the borrow checker how long each reference stays valid in every scope.",
    "Volcanoes erupt when magma from the mantle rises through cracks in the crust; ash "
    "clouds, lava flows and pyroclastic currents follow, and geologists watch seismographs "
    "and measure gas emissions to warn the towns on the slopes before a large eruption.",
    "Chess openings such as the Sicilian Defence and the Queen's Gambit fight for the "
    "centre of the board; grandmasters memorise long lines of theory, then rely on careful "
    "calculation and positional judgement once the game leaves the book in the middlegame.",
    "Honey bees communicate the direction and distance of flowers with a waggle dance on "
    "the comb; foragers collect nectar and pollen, and the colony stores honey in wax cells "
    "to survive the winter, when workers cluster around the queen to keep her warm.",
    "Jazz musicians improvise over chord changes, trading solos on the saxophone, trumpet "
    "and piano while the bass walks and the drummer keeps swing time with the ride cymbal; "
    "bebop players in the forties played fast tunes with complex harmony and quick tempos.",
    "Glaciers carve U-shaped valleys as they slide downhill under their own weight; they "
    "pluck boulders from the bedrock, grind them into fine flour and leave moraines of "
    "gravel behind when the climate warms and the ice retreats up the mountain again.",
    "Ocean tides are caused by the gravitational pull of the moon and the sun on the seas; "
    "spring tides come when they line up at new and full moon, neap tides when they pull "
    "at right angles, and harbours publish tide tables so ships can sail at high water.",
]
LONG = "\n\n".join(TOPICS)


def workspace_of(service: Service, name: str) -> str:
    with service.db.session() as session:
        workspace = find_workspace(session, name=name)
        assert workspace is not None
        return workspace.id


def namespace(service: Service, scope: str) -> namespaces.Namespace:
    state = service.app.state.vectorsvc
    return namespaces.resolve(
        workspace_id=workspace_of(service, "acme"),
        model=state.registry.get(MODEL),
        scope=namespaces.Scope(scope),
    )


def stored_points(service: Service, scope: str) -> int:
    """Points (chunks) in the store, counted there."""
    ns = namespace(service, scope)
    store = service.app.state.vectorsvc.store
    if not store.collection_exists(ns.collection):
        return 0
    return int(store.count(ns.collection, filter=ns.tenant_filter))


async def run(service: Service, key: str, mode: str, scope: str, **body: Any) -> dict[str, Any]:
    r = await service.run(key, {"model": MODEL, "mode": mode, "scope": scope, **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def index(service: Service, key: str, scope: str, items: list[dict[str, Any]]) -> Any:
    return await run(service, key, "index", scope, input={"items": items})


async def search(service: Service, key: str, scope: str, text: str, **params: Any) -> Any:
    out = await run(service, key, "search", scope, input={"text": text}, params=params)
    return out["output"]["hits"]


async def get(service: Service, key: str, path: str, **params: Any) -> Any:
    r = await service.client.get(path, params=params, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_end_of_a_long_text_is_found_with_its_highlight(
    service: Service, api_key: str
) -> None:
    out = await index(service, api_key, "docs", [{"id": "long", "text": LONG}])
    chunks = out["usage"]["chunks"]
    assert chunks >= 2
    assert out["output"]["counts"]["indexed"] == 1
    # Billed per chunk embedded, the unit the marketplace shows.
    assert out["usage"]["cost"] == f"{chunks * PRICE / 1_000_000:.4f}".rstrip("0").rstrip(".")
    assert stored_points(service, "docs") == chunks

    hits = await search(service, api_key, "docs", "what makes the tides of the sea", top_k=5)
    assert [h["id"] for h in hits] == ["long"]  # one hit per item, however many chunks match
    highlight = hits[0]["highlight"]
    assert "tides" in highlight["text"]
    assert LONG[highlight["start"] : highlight["end"]] == highlight["text"]
    assert highlight["start"] > 0


async def test_top_k_counts_items_and_filters_apply_to_item_metadata(
    service: Service, api_key: str
) -> None:
    items = [
        {"id": "a", "text": LONG, "metadata": {"shelf": "x"}},
        {"id": "b", "text": "\n\n".join(reversed(TOPICS)), "metadata": {"shelf": "y"}},
        {"id": "c", "text": TOPICS[2], "metadata": {"shelf": "y"}},
    ]
    await index(service, api_key, "docs", items)
    hits = await search(service, api_key, "docs", "honey bees dancing", top_k=2)
    assert len(hits) == 2 and len({h["id"] for h in hits}) == 2
    assert {h["id"] for h in hits} == {"a", "b"}
    hits = await search(service, api_key, "docs", "honey bees", top_k=10, filter={"shelf": "y"})
    assert sorted(h["id"] for h in hits) == ["b", "c"]
    # A one-chunk item is stored and shown as before: its highlight is its whole text.
    short = next(h for h in hits if h["id"] == "c")
    assert short["highlight"] == {"text": TOPICS[2], "start": 0, "end": len(TOPICS[2])}


async def test_reindexing_a_shorter_text_leaves_no_stale_chunk(
    service: Service, api_key: str
) -> None:
    first = await index(service, api_key, "docs", [{"id": "doc", "text": LONG}])
    assert stored_points(service, "docs") == first["usage"]["chunks"] > 1
    await index(service, api_key, "docs", [{"id": "doc", "text": TOPICS[0]}])
    assert stored_points(service, "docs") == 1
    hits = await search(service, api_key, "docs", "tides and the moon", top_k=5)
    assert [h["highlight"]["text"] for h in hits] == [TOPICS[0]]
    kbs = await get(service, api_key, "/api/knowledge-bases")
    assert kbs["data"][0]["point_count"] == 1


async def test_editing_one_paragraph_re_embeds_only_the_chunks_that_changed(
    service: Service, api_key: str
) -> None:
    first = await index(service, api_key, "docs", [{"id": "doc", "text": LONG}])
    total = first["usage"]["chunks"]
    edited = LONG.replace("spring tides come", "the highest spring tides come")
    second = await index(service, api_key, "docs", [{"id": "doc", "text": edited}])
    assert second["output"]["counts"]["indexed"] == 1
    assert 1 <= second["usage"]["chunks"] < total
    assert stored_points(service, "docs") >= total
    again = await index(service, api_key, "docs", [{"id": "doc", "text": edited}])
    assert again["usage"]["skipped"] == 1 and again["usage"]["chunks"] == 0
    detail = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/docs/items/doc")
    assert detail["text"] == edited


@pytest.mark.parametrize("how", ["ids", "filter"])
async def test_delete_removes_every_chunk(service: Service, api_key: str, how: str) -> None:
    await index(
        service,
        api_key,
        "docs",
        [
            {"id": "long", "text": LONG, "metadata": {"kind": "book"}},
            {"id": "keep", "text": TOPICS[1], "metadata": {"kind": "note"}},
        ],
    )
    where = {"ids": ["long"]} if how == "ids" else {"filter": {"kind": "book"}}
    out = await run(service, api_key, "delete", "docs", input=where)
    assert out["output"]["deleted"] == 1  # items, not chunks
    assert stored_points(service, "docs") == 1
    hits = await search(service, api_key, "docs", "tides", top_k=5)
    assert [h["id"] for h in hits] == ["keep"]


async def test_knowledge_base_lists_items_with_chunk_counts_and_rebuilds_the_text(
    service: Service, api_key: str
) -> None:
    # Odd characters and whitespace: the text comes back exactly.
    text = "  Émoji 😀 start.\t\n\n" + LONG + "\n\n终わり 🚀   "
    await index(
        service,
        api_key,
        "kb",
        [{"id": "long", "text": text}, *({"id": f"s{i}", "text": t} for i, t in enumerate(TOPICS))],
    )
    listing = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/kb/items", limit=100)
    by_id = {item["id"]: item for item in listing["data"]}
    assert len(listing["data"]) == 1 + len(TOPICS)  # items, never raw chunks
    assert by_id["long"]["chunks"] > 1 and by_id["s0"]["chunks"] == 1
    assert stored_points(service, "kb") == by_id["long"]["chunks"] + len(TOPICS)
    kbs = await get(service, api_key, "/api/knowledge-bases")
    assert kbs["data"][0]["point_count"] == 1 + len(TOPICS)
    detail = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/kb/items/long")
    assert detail["text"] == text
    state = service.app.state.vectorsvc
    assert read_item_text(state.store, namespace(service, "kb"), "long") == text
    dry = await service.client.post(
        f"/api/knowledge-bases/{MODEL}/kb/delete",
        json={"filter": {"missing": "x"}, "dry_run": True},
        headers={"X-API-Key": api_key},
    )
    assert dry.status_code == 200 and dry.json()["count"] == 0
    r = await service.client.delete(
        f"/api/knowledge-bases/{MODEL}/kb/items/long", headers={"X-API-Key": api_key}
    )
    assert r.status_code in (200, 204), r.text
    assert stored_points(service, "kb") == len(TOPICS)


async def test_a_million_characters_without_a_space_index_in_bounded_chunks(
    service: Service, api_key: str
) -> None:
    text = "x" * 1_000_000  # one unknown word piece to the tokenizer
    out = await index(service, api_key, "big", [{"id": "big", "text": text}])
    limit = service.app.state.vectorsvc.registry.get(MODEL).chunking.max_chunk_chars
    assert out["usage"]["chunks"] == -(-len(text) // limit)
    detail = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/big/items/big")
    assert detail["text"] == text
    r = await service.run(
        api_key,
        {
            "model": MODEL,
            "mode": "index",
            "scope": "big",
            "input": {"items": [{"id": "too", "text": "y" * 1_000_001}]},
        },
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "text_too_long"


async def test_points_written_before_chunking_stay_readable_and_searchable(
    service: Service, api_key: str
) -> None:
    """A collection as the service wrote it before chunking: no chunk index, no chunk
    fields on its points. It is searched, listed, read, re-indexed and deleted as one-chunk
    items."""
    from datetime import UTC, datetime

    from vectorsvc.points import catalog
    from vectorsvc.points.payload import content_hash, point_payload
    from vectorsvc.vectorstore.base import CollectionSpec, PointRecord

    state = service.app.state.vectorsvc
    model = state.registry.get(MODEL)
    ns = namespace(service, "old")
    old_spec = CollectionSpec(
        name=ns.collection,
        dimension=model.dimension,
        tenant_key=namespaces.TENANT_FIELD,
        keyword_fields=(namespaces.WORKSPACE_FIELD, namespaces.SCOPE_FIELD, namespaces.ID_FIELD),
    )
    state.store.ensure_collection(old_spec)
    state.store.set_alias(ns.alias, ns.collection)
    vectors = await state.embeddings.embed(model, "document", TOPICS[:2])
    state.store.upsert(
        ns.collection,
        [
            PointRecord(
                id=ns.point_id(f"old-{i}"),
                vector=vectors[i],
                payload=point_payload(
                    ns,
                    item_id=f"old-{i}",
                    text=TOPICS[i],
                    media_ref=None,
                    metadata={"era": "before"},
                    content_hash=content_hash(model, f"text:{TOPICS[i]}", {"era": "before"}),
                    run_id="run_old",
                    indexed_at=datetime.now(UTC).isoformat(),
                ),
            )
            for i in range(2)
        ],
    )
    catalog.record_write(
        state.db, ns=ns, modality="text", point_count=2, written=2, written_payload_bytes=500
    )

    hits = await search(service, api_key, "old", "compile time memory safety", top_k=1)
    assert hits[0]["id"] == "old-1"
    assert hits[0]["highlight"] == {"text": TOPICS[1], "start": 0, "end": len(TOPICS[1])}
    listing = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/old/items")
    assert sorted((i["id"], i["chunks"]) for i in listing["data"]) == [("old-0", 1), ("old-1", 1)]
    detail = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/old/items/old-0")
    assert detail["text"] == TOPICS[0]
    # Unchanged: skipped as before. Then one grows into a long text, and is deleted.
    same = await index(
        service, api_key, "old", [{"id": "old-0", "text": TOPICS[0], "metadata": {"era": "before"}}]
    )
    assert same["usage"]["skipped"] == 1
    grown = await index(service, api_key, "old", [{"id": "old-0", "text": LONG}])
    assert stored_points(service, "old") == 1 + grown["usage"]["chunks"]
    kbs = await get(service, api_key, "/api/knowledge-bases")
    assert kbs["data"][0]["point_count"] == 2
    out = await run(service, api_key, "delete", "old", input={"ids": ["old-0"]})
    assert out["output"]["deleted"] == 1
    assert stored_points(service, "old") == 1


async def test_a_synchronous_run_of_too_many_chunks_is_refused_and_stores_nothing(
    tmp_path: Any, models_dir: Any, embedder_loader: Any
) -> None:
    from tests.harness import make_settings, running_service

    settings = make_settings(tmp_path / "data", models_dir, max_chunks_per_run=2)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        body = {
            "model": MODEL,
            "mode": "index",
            "scope": "docs",
            "input": {"items": [{"id": "a", "text": LONG}, {"id": "b", "text": TOPICS[0]}]},
        }
        r = await svc.run(key, body)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "too_many_chunks" and error["field"] == "input.items"
        assert "background" in error["message"]
        assert stored_points(svc, "docs") == 0
        # Fewer chunks pass; a background run has no such cap.
        body["input"] = {"items": [{"id": "b", "text": TOPICS[0]}]}
        assert (await svc.run(key, body)).status_code == 200
