"""Knowledge Bases API: grouped listing from the catalog, paging, deletes, isolation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Service

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"


async def index(service: Service, key: str, scope: str, n: int, start: int = 0) -> None:
    items = [
        {
            "id": f"doc-{i:03d}",
            "text": f"Document number {i} about topic {i % 3}.",
            "metadata": {"group": f"g{i % 3}", "n": i},
        }
        for i in range(start, start + n)
    ]
    r = await service.run(
        key, {"model": MODEL, "mode": "index", "scope": scope, "input": {"items": items}}
    )
    assert r.status_code == 200, r.text


async def get(service: Service, key: str, path: str, **params: Any) -> Any:
    r = await service.client.get(path, params=params, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


async def test_listing_groups_by_model_collection_and_scope(service: Service, api_key: str) -> None:
    await index(service, api_key, "alpha", 7)
    await index(service, api_key, "beta", 3)
    await index(service, api_key, "alpha", 2, start=5)  # 2 replaced, none new
    data = await get(service, api_key, "/api/knowledge-bases")
    assert data["count"] == 2
    entries = {e["scope"]: e for e in data["data"]}
    assert entries["alpha"]["point_count"] == 7
    assert entries["beta"]["point_count"] == 3
    for e in data["data"]:
        assert e["model"] == MODEL
        assert e["collection"] == "vs__all-minilm-l6-v2__r2"
        assert e["modality"] == "text"
        assert e["approx_bytes"] > e["point_count"] * 384 * 4
        assert e["last_write_at"]
    assert data["next_cursor"] is None


async def test_listing_filters_and_pages(service: Service, api_key: str) -> None:
    for scope in ("proj.a", "proj.b", "proj.c", "other"):
        await index(service, api_key, scope, 1)
    page1 = await get(service, api_key, "/api/knowledge-bases", scope_prefix="proj.", limit=2)
    assert page1["count"] == 3
    assert [e["scope"] for e in page1["data"]] == ["proj.a", "proj.b"]
    page2 = await get(
        service,
        api_key,
        "/api/knowledge-bases",
        scope_prefix="proj.",
        limit=2,
        cursor=page1["next_cursor"],
    )
    assert [e["scope"] for e in page2["data"]] == ["proj.c"]
    assert page2["next_cursor"] is None
    by_model = await get(service, api_key, "/api/knowledge-bases", model=MODEL)
    assert by_model["count"] == 4
    r = await service.client.get(
        "/api/knowledge-bases", params={"model": "nope"}, headers={"X-API-Key": api_key}
    )
    assert r.status_code == 404
    # A scope prefix with LIKE wildcards matches literally.
    assert (await get(service, api_key, "/api/knowledge-bases", scope_prefix="proj_"))["count"] == 0


async def test_items_page_through_every_item_once(service: Service, api_key: str) -> None:
    await index(service, api_key, "kb", 25)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/kb/items", **params)
        pages += 1
        seen += [item["id"] for item in page["data"]]
        for item in page["data"]:
            assert item["text_snippet"].startswith("Document number")
            assert item["thumbnail_url"] is None
            assert item["indexed_at"]
            assert item["metadata"]["group"].startswith("g")
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert sorted(seen) == [f"doc-{i:03d}" for i in range(25)]
    one = await get(service, api_key, f"/api/knowledge-bases/{MODEL}/kb/items/doc-004")
    assert one["id"] == "doc-004"
    assert one["metadata"] == {"group": "g1", "n": 4}
    r = await service.client.get(
        f"/api/knowledge-bases/{MODEL}/kb/items/missing", headers={"X-API-Key": api_key}
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "item_not_found"
    r = await service.client.get(
        f"/api/knowledge-bases/{MODEL}/kb/items",
        params={"cursor": "%%%"},
        headers={"X-API-Key": api_key},
    )
    assert r.status_code == 422


async def test_deletes_with_dry_run(service: Service, api_key: str) -> None:
    await index(service, api_key, "kb", 9)
    await index(service, api_key, "keep", 4)
    headers = {"X-API-Key": api_key}
    base = f"/api/knowledge-bases/{MODEL}/kb"
    r = await service.client.delete(f"{base}/items/doc-000", headers=headers)
    assert r.status_code == 200 and r.json()["deleted"] == 1
    r = await service.client.delete(f"{base}/items/doc-000", headers=headers)
    assert r.status_code == 404
    r = await service.client.post(
        f"{base}/delete", json={"filter": {"group": "g1"}, "dry_run": True}, headers=headers
    )
    assert r.json() == {"dry_run": True, "count": 3, "deleted": 0}
    r = await service.client.post(
        f"{base}/delete", json={"filter": {"group": "g1"}}, headers=headers
    )
    assert r.json() == {"dry_run": False, "count": 3, "deleted": 3}
    r = await service.client.post(f"{base}/delete", json={"filter": {}}, headers=headers)
    assert r.status_code == 422
    listing = await get(service, api_key, "/api/knowledge-bases")
    assert {e["scope"]: e["point_count"] for e in listing["data"]} == {"kb": 5, "keep": 4}
    r = await service.client.delete(base, params={"dry_run": "true"}, headers=headers)
    assert r.json()["count"] == 5 and r.json()["deleted"] == 0
    r = await service.client.delete(base, headers=headers)
    assert r.json()["deleted"] == 5
    listing = await get(service, api_key, "/api/knowledge-bases")
    assert [e["scope"] for e in listing["data"]] == ["keep"]
    r = await service.client.get(f"{base}/items", headers=headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "knowledge_base_not_found"


async def test_another_workspace_sees_and_touches_nothing(service: Service) -> None:
    key_a = service.new_key("team-a")
    key_b = service.new_key("team-b")
    await index(service, key_a, "private", 4)
    assert (await get(service, key_b, "/api/knowledge-bases"))["count"] == 0
    base = f"/api/knowledge-bases/{MODEL}/private"
    headers_b = {"X-API-Key": key_b}
    for method, path in [
        ("GET", f"{base}/items"),
        ("GET", f"{base}/items/doc-000"),
        ("DELETE", f"{base}/items/doc-000"),
        ("DELETE", base),
    ]:
        r = await service.client.request(method, path, headers=headers_b)
        assert r.status_code == 404, (method, path, r.text)
    r = await service.client.post(
        f"{base}/delete", json={"filter": {"group": "g0"}}, headers=headers_b
    )
    assert r.status_code == 404
    listing = await get(service, key_a, "/api/knowledge-bases")
    assert listing["data"][0]["point_count"] == 4


async def test_knowledge_bases_need_credentials(service: Service) -> None:
    r = await service.client.get("/api/knowledge-bases")
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "items"),
        ("GET", "items/doc-001"),
        ("DELETE", "items/doc-001"),
        ("DELETE", ""),
    ],
)
async def test_every_path_checks_the_scope_first(
    service: Service, api_key: str, method: str, path: str
) -> None:
    """The scope rule is checked once, at the endpoint, before the model is looked up."""
    for model in (MODEL, "no-such-model"):
        url = f"/api/knowledge-bases/{model}/-bad/{path}".rstrip("/")
        r = await service.client.request(method, url, headers={"X-API-Key": api_key})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_scope", "scope")
