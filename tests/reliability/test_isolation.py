"""Isolation: two workspaces with the same scope names, the same item ids and two models.

Workspace `alpha` and workspace `beta` both index texts (MiniLM) and real photos
(EfficientNet) into scope `shared`, with the same item ids. Then `beta` tries every endpoint
across the boundary: runs (search, index, delete, execute with alpha's media_ref), media
metadata and thumbnails, completing or writing alpha's upload, Knowledge Bases (list, items,
item, delete, delete by filter, dry runs), background runs (get, cancel, list) and billing.
No read, write, delete or listing may cross; unknown and foreign look the same (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from tests.harness import Service
from tests.helpers import Uploader, encode

pytestmark = pytest.mark.anyio

TEXT = "all-minilm-l6-v2"
IMAGE = "image-similarity"
SCOPE = "shared"
IDS = ("doc-1", "doc-2", "doc-3")
UNKNOWN_REF = "media_00000000000000000000000000000000"


@dataclass
class Tenant:
    name: str
    key: str
    uploader: Uploader
    refs: dict[str, str]  # photo name -> media_ref
    texts: dict[str, str]  # item id -> text

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@dataclass
class World:
    service: Service
    alpha: Tenant
    beta: Tenant

    async def run(self, tenant: Tenant, **body: Any) -> httpx.Response:
        return await self.service.run(tenant.key, body)

    async def ok(self, tenant: Tenant, **body: Any) -> Any:
        r = await self.run(tenant, **body)
        assert r.status_code == 200, r.text
        return r.json()["output"]

    async def get(self, tenant: Tenant, path: str, **params: Any) -> httpx.Response:
        return await self.service.client.get(path, params=params, headers=tenant.headers)

    async def item_ids(self, tenant: Tenant, model: str, scope: str = SCOPE) -> dict[str, Any]:
        r = await self.get(tenant, f"/api/knowledge-bases/{model}/{scope}/items", limit=500)
        assert r.status_code == 200, r.text
        return {item["id"]: item for item in r.json()["data"]}


def png(image: Image.Image) -> bytes:
    return encode(image.convert("RGB").resize((160, 120)), "PNG")


async def make_tenant(
    service: Service, name: str, photos: dict[str, Image.Image], photo_names: tuple[str, ...]
) -> Tenant:
    key = service.new_key(name)
    uploader = Uploader(service, key)
    refs = {}
    for photo in photo_names:
        refs[photo] = (await uploader.upload(png(photos[photo]), "image/png"))["media_ref"]
    texts = {i: f"{name} private note {i}: the {name} vault code is {name}-{i}" for i in IDS}
    tenant = Tenant(name=name, key=key, uploader=uploader, refs=refs, texts=texts)
    items = [{"id": i, "text": t, "metadata": {"owner": name}} for i, t in texts.items()]
    r = await service.run(
        key,
        {"model": TEXT, "mode": "index", "scope": SCOPE, "input": {"items": items}},
    )
    assert r.status_code == 200, r.text
    images = [
        {"id": f"img-{n}", "image": {"media_ref": ref}, "metadata": {"owner": name}}
        for n, ref in enumerate(refs.values())
    ]
    r = await service.run(
        key,
        {"model": IMAGE, "mode": "index", "scope": SCOPE, "input": {"items": images}},
    )
    assert r.status_code == 200, r.text
    return tenant


@pytest.fixture
async def world(service: Service, photos: dict[str, Image.Image]) -> World:
    alpha = await make_tenant(service, "alpha", photos, ("chelsea", "coffee"))
    beta = await make_tenant(service, "beta", photos, ("astronaut", "rocket"))
    world = World(service=service, alpha=alpha, beta=beta)
    # Only alpha has these: an extra item in the shared scope and a scope of its own.
    await world.ok(
        alpha,
        model=TEXT,
        mode="index",
        scope=SCOPE,
        input={"items": [{"id": "alpha-only", "text": "alpha alone", "metadata": {"x": 1}}]},
    )
    await world.ok(
        alpha,
        model=TEXT,
        mode="index",
        scope="alpha-scope",
        input={"items": [{"id": "a", "text": "alpha's own scope", "metadata": {"owner": "alpha"}}]},
    )
    return world


async def assert_alpha_intact(world: World) -> None:
    alpha = world.alpha
    items = await world.item_ids(alpha, TEXT)
    assert set(items) == {*IDS, "alpha-only"}
    for i in IDS:
        assert items[i]["text_snippet"] == alpha.texts[i]
        assert items[i]["metadata"] == {"owner": "alpha"}
    assert set(await world.item_ids(alpha, IMAGE)) == {"img-0", "img-1"}
    assert set(await world.item_ids(alpha, TEXT, "alpha-scope")) == {"a"}


async def test_runs_never_cross(world: World, photos: dict[str, Image.Image]) -> None:
    alpha, beta = world.alpha, world.beta
    # Search with alpha's exact text: beta only ever sees beta's items.
    for text in alpha.texts.values():
        out = await world.ok(
            beta, model=TEXT, mode="search", scope=SCOPE, input={"text": text}, params={"top_k": 50}
        )
        assert {h["id"] for h in out["hits"]} == set(IDS)
        assert all(h["metadata"] == {"owner": "beta"} for h in out["hits"])
        assert all(h["text"] == beta.texts[h["id"]] for h in out["hits"])
    # Filters cannot reach across either.
    out = await world.ok(
        beta,
        model=TEXT,
        mode="search",
        scope=SCOPE,
        input={"text": "vault code"},
        params={"filter": {"owner": "alpha"}},
    )
    assert out["hits"] == []
    # Image search by beta's own upload of alpha's photo: only beta's images come back.
    query = (await beta.uploader.upload(png(photos["chelsea"]), "image/png"))["media_ref"]
    out = await world.ok(
        beta, model=IMAGE, mode="search", scope=SCOPE, input={"image": {"media_ref": query}}
    )
    assert {h["media_ref"] for h in out["hits"]} == set(beta.refs.values())
    # alpha's media_ref does not exist for beta, in any mode.
    foreign = alpha.refs["chelsea"]
    attempts = [
        {"mode": "search", "scope": SCOPE, "input": {"image": {"media_ref": foreign}}},
        {"mode": "execute", "input": {"image": {"media_ref": foreign}}},
        {
            "mode": "index",
            "scope": SCOPE,
            "input": {"items": [{"id": "stolen", "image": {"media_ref": foreign}}]},
        },
    ]
    for body in attempts:
        r = await world.run(beta, model=IMAGE, **body)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "media_not_found"
        unknown = await world.run(
            beta, model=IMAGE, **{**body, "input": _swap_ref(body["input"], foreign, UNKNOWN_REF)}
        )
        assert unknown.json()["error"]["code"] == "media_not_found"
    assert "stolen" not in await world.item_ids(beta, IMAGE)
    # Deletes by id and by filter only ever touch beta's items.
    out = await world.ok(
        beta, model=TEXT, mode="delete", scope=SCOPE, input={"ids": ["doc-1", "alpha-only"]}
    )
    assert out["deleted"] == 1  # beta's doc-1; alpha-only is not beta's
    out = await world.ok(
        beta, model=TEXT, mode="delete", scope=SCOPE, input={"filter": {"owner": "alpha"}}
    )
    assert out["deleted"] == 0
    out = await world.ok(beta, model=TEXT, mode="delete", scope="alpha-scope", input={"ids": ["a"]})
    assert out["deleted"] == 0
    # Re-indexing a shared id writes beta's own item, never alpha's.
    await world.ok(
        beta,
        model=TEXT,
        mode="index",
        scope=SCOPE,
        input={
            "items": [{"id": "doc-2", "text": "beta's new doc-2", "metadata": {"owner": "beta"}}]
        },
    )
    assert set(await world.item_ids(beta, TEXT)) == {"doc-2", "doc-3"}
    await assert_alpha_intact(world)


def _swap_ref(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _swap_ref(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_ref(v, old, new) for v in value]
    return new if value == old else value


async def test_media_never_crosses(world: World) -> None:
    alpha, beta = world.alpha, world.beta
    client = world.service.client
    for ref in alpha.refs.values():
        for path in (f"/api/media/{ref}", f"/api/media/{ref}/thumbnail"):
            assert (await world.get(alpha, path)).status_code == 200
            r = await world.get(beta, path)
            assert r.status_code == 404, path
            # Word for word the answer for a ref that never existed: existence is not leaked.
            unknown = await world.get(beta, path.replace(ref, UNKNOWN_REF))
            assert unknown.status_code == 404
            assert unknown.text == r.text.replace(ref, UNKNOWN_REF)
    # alpha's upload: beta can neither complete it nor write it with its own token.
    data = png(Image.new("RGB", (40, 30), (200, 10, 10)))
    ticket = await alpha.uploader.init_ok(data, "image/png")
    mine = await beta.uploader.init_ok(data, "image/png")
    beta_token = httpx.URL(mine["upload_url"]).params["token"]
    r = await client.put(
        f"/api/media/uploads/{ticket['upload_id']}", params={"token": beta_token}, content=data
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "upload_not_found"
    r = await beta.uploader.complete(ticket["upload_id"])
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "upload_not_found"
    assert (await alpha.uploader.put(ticket["upload_url"], data)).status_code == 200
    r = await beta.uploader.complete(ticket["upload_id"])
    assert r.json()["error"]["code"] == "upload_not_found"
    done = await alpha.uploader.complete(ticket["upload_id"])
    assert done.status_code == 200
    r = await beta.uploader.complete(ticket["upload_id"])
    assert r.status_code == 404
    assert done.json()["media_ref"] not in r.text


async def test_knowledge_bases_never_cross(world: World) -> None:
    alpha, beta = world.alpha, world.beta
    # Listing: beta sees its two knowledge bases with its own counts, nothing of alpha's.
    r = await world.get(beta, "/api/knowledge-bases")
    listing = r.json()
    assert listing["count"] == 2
    assert {(e["model"], e["scope"], e["point_count"]) for e in listing["data"]} == {
        (TEXT, SCOPE, 3),
        (IMAGE, SCOPE, 2),
    }
    r = await world.get(beta, "/api/knowledge-bases", scope_prefix="alpha")
    assert r.json() == {"data": [], "count": 0, "next_cursor": None}
    # Items: beta's own texts only; alpha's ids are unknown.
    items = await world.item_ids(beta, TEXT)
    assert set(items) == set(IDS)
    assert {i["text_snippet"] for i in items.values()} == set(beta.texts.values())
    images = await world.item_ids(beta, IMAGE)
    assert {i["media_ref"] for i in images.values()} == set(beta.refs.values())
    base = f"/api/knowledge-bases/{TEXT}"
    r = await world.get(beta, f"{base}/{SCOPE}/items/alpha-only")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "item_not_found"
    r = await world.get(beta, f"{base}/{SCOPE}/items/doc-1")
    assert r.json()["text_snippet"] == beta.texts["doc-1"]
    # alpha's own scope does not exist for beta: as unknown as a scope nobody has.
    for scope in ("alpha-scope", "nobody-has-this"):
        r = await world.get(beta, f"{base}/{scope}/items")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "knowledge_base_not_found"
        r = await world.service.client.delete(
            f"{base}/{scope}", params={"dry_run": True}, headers=beta.headers
        )
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "knowledge_base_not_found"
    # Deletes: an item only alpha has, alpha's metadata, and beta's whole shared scope.
    client = world.service.client
    r = await client.delete(f"{base}/{SCOPE}/items/alpha-only", headers=beta.headers)
    assert r.status_code == 404
    for dry_run in (True, False):
        r = await client.post(
            f"{base}/{SCOPE}/delete",
            json={"filter": {"owner": "alpha"}, "dry_run": dry_run},
            headers=beta.headers,
        )
        assert r.json()["count"] == 0, r.text
    r = await client.delete(f"{base}/{SCOPE}", params={"dry_run": True}, headers=beta.headers)
    assert r.json()["count"] == 3
    r = await client.delete(f"{base}/{SCOPE}", headers=beta.headers)
    assert r.json()["deleted"] == 3
    r = await client.delete(f"/api/knowledge-bases/{IMAGE}/{SCOPE}", headers=beta.headers)
    assert r.json()["deleted"] == 2
    await assert_alpha_intact(world)
    # alpha's listing still shows its counts, untouched by beta's deletes.
    r = await world.get(alpha, "/api/knowledge-bases")
    assert {(e["model"], e["scope"], e["point_count"]) for e in r.json()["data"]} == {
        (TEXT, SCOPE, 4),
        (TEXT, "alpha-scope", 1),
        (IMAGE, SCOPE, 2),
    }


async def test_background_runs_and_billing_never_cross(world: World) -> None:
    alpha, beta = world.alpha, world.beta
    client = world.service.client
    items = [{"id": f"bg-{n}", "text": f"background item number {n}"} for n in range(300)]
    r = await world.run(
        alpha,
        model=TEXT,
        mode="index",
        scope="bg",
        input={"items": items},
        options={"background": True},
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    # beta cannot cancel, read or list alpha's run.
    r = await client.post(f"/api/runs/{run_id}/cancel", headers=beta.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "run_not_found"
    r = await world.get(beta, f"/api/runs/{run_id}")
    assert r.status_code == 404
    r = await world.get(beta, "/api/runs")
    assert r.json() == {"data": [], "count": 0}
    # alpha's run finishes untouched by beta's cancel.
    for _ in range(600):
        status = (await world.get(alpha, f"/api/runs/{run_id}")).json()
        if status["status"] not in ("queued", "running"):
            break
        await anyio.sleep(0.1)
    assert status["status"] == "succeeded", status
    assert status["progress"]["done"] == 300
    assert run_id in {run["id"] for run in (await world.get(alpha, "/api/runs")).json()["data"]}

    # Billing: each wallet and summary is its own workspace's.
    wallets = {t.name: (await world.get(t, "/api/billing/wallet")).json() for t in (alpha, beta)}
    assert wallets["alpha"]["workspace_id"] != wallets["beta"]["workspace_id"]
    # alpha: 3 runs in the fixture + 2 more + the background run; beta: 2 runs.
    summaries = {
        t.name: (await world.get(t, "/api/billing/usage/summary", group_by="model")).json()
        for t in (alpha, beta)
    }
    assert summaries["beta"]["workspace_id"] == wallets["beta"]["workspace_id"]
    assert summaries["beta"]["totals"]["items"] == 3 + 2
    assert summaries["alpha"]["totals"]["items"] == 3 + 2 + 1 + 1 + 300
    assert {g["key"] for g in summaries["beta"]["groups"]} == {TEXT, IMAGE}
    spent = {
        name: 1_000_000 * 1_000_000 - wallet["balance_micro_credits"]
        for name, wallet in wallets.items()
    }
    assert spent["beta"] == summaries["beta"]["totals"]["cost_micro_credits"]
    assert spent["alpha"] == summaries["alpha"]["totals"]["cost_micro_credits"]
    assert spent["alpha"] > spent["beta"] > 0
    # The marketplace is global: both see the same catalogue.
    listings = [(await world.get(t, "/api/marketplace/models")).json() for t in (alpha, beta)]
    assert listings[0] == listings[1]
