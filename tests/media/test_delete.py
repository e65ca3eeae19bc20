"""DELETE /api/media/{media_ref}: refused while indexed items use the media (409
media_in_use, listing them); otherwise the media goes, and its blob with it unless media of
another workspace holds the same bytes. Another workspace's ref is 404, like one that never
existed."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.harness import Service
from tests.helpers import Uploader, encode
from tests.media.stores import StoreView

pytestmark = pytest.mark.anyio

PNG = encode(Image.new("RGB", (40, 30), (20, 160, 90)), "PNG")
IMAGE_MODEL = "image-similarity"


def blob(service: Service, sha256: str) -> str:
    return StoreView.blob(sha256)


async def delete(service: Service, uploader: Uploader, ref: str) -> int:
    r = await service.client.delete(f"/api/media/{ref}", headers=uploader.headers)
    if r.status_code != 204:
        assert r.json()["error"]["code"] in ("media_not_found", "media_in_use"), r.text
    return r.status_code


async def test_delete_removes_the_media_and_its_blob(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    done = (await uploader.complete(ticket["upload_id"])).json()
    ref = done["media_ref"]
    await service.client.get(f"/api/media/{ref}/thumbnail", headers=uploader.headers)
    assert store.files() == [blob(service, done["sha256"])]

    assert await delete(service, uploader, ref) == 204
    assert store.files() == []
    for path in (f"/api/media/{ref}", f"/api/media/{ref}/thumbnail"):
        r = await service.client.get(path, headers=uploader.headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "media_not_found"
    assert len(service.app.state.vectorsvc.media.thumbnails) == 0
    # The upload went with it: completing it again is not found (not a 500 for a lost row).
    r = await uploader.complete(ticket["upload_id"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    assert await delete(service, uploader, ref) == 404
    # The same bytes can be uploaded again.
    again = await uploader.upload(PNG, "image/png")
    assert store.files() == [blob(service, again["sha256"])]


async def test_a_blob_another_workspace_uses_is_kept(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    other = Uploader(service, service.new_key("other-co"))
    mine = await uploader.upload(PNG, "image/png")
    theirs = await other.upload(PNG, "image/png")
    assert await delete(service, uploader, mine["media_ref"]) == 204
    assert store.files() == [blob(service, mine["sha256"])]
    r = await service.client.get(
        f"/api/media/{theirs['media_ref']}/thumbnail", headers=other.headers
    )
    assert r.status_code == 200
    assert await delete(service, other, theirs["media_ref"]) == 204
    assert store.files() == []


async def test_another_workspaces_media_is_404_and_stays(
    service: Service, uploader: Uploader
) -> None:
    other = Uploader(service, service.new_key("other-co"))
    ref = (await uploader.upload(PNG, "image/png"))["media_ref"]
    r = await service.client.delete(f"/api/media/{ref}", headers=other.headers)
    assert r.status_code == 404
    unknown = await service.client.delete(
        "/api/media/media_00000000000000000000000000000000", headers=other.headers
    )
    assert unknown.status_code == 404
    # Word for word the answer for a ref that never existed: existence is not leaked.
    assert unknown.text == r.text.replace(ref, "media_00000000000000000000000000000000")
    assert (
        await service.client.get(f"/api/media/{ref}", headers=uploader.headers)
    ).status_code == 200
    assert (await service.client.delete(f"/api/media/{ref}")).status_code == 401


async def test_media_in_use_is_refused_until_its_items_are_deleted(
    store: StoreView, service: Service, uploader: Uploader, api_key: str, chelsea: Image.Image
) -> None:
    data = encode(chelsea, "PNG")
    mine = await uploader.upload(data, "image/png")
    ref = mine["media_ref"]
    items = [{"id": f"cat-{n}", "image": {"media_ref": ref}} for n in range(3)]
    for scope, batch in (("photos", items), ("archive", items[:1])):
        r = await service.run(
            api_key,
            {"model": IMAGE_MODEL, "mode": "index", "scope": scope, "input": {"items": batch}},
        )
        assert r.status_code == 200, r.text
    # Another workspace's point on its own ref to the same bytes does not hold mine.
    other_key = service.new_key("other-co")
    other = Uploader(service, other_key)
    theirs = await other.upload(data, "image/png")
    item = {"id": "x", "image": {"media_ref": theirs["media_ref"]}}
    body = {"model": IMAGE_MODEL, "mode": "index", "scope": "photos", "input": {"items": [item]}}
    assert (await service.run(other_key, body)).status_code == 200

    r = await service.client.delete(f"/api/media/{ref}", headers=uploader.headers)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "media_in_use"
    assert error["field"] == "media_ref"
    assert "4 indexed item(s)" in error["message"]
    references = error["details"]["references"]
    assert [(r["model"], r["scope"], r["points"]) for r in references] == [
        (IMAGE_MODEL, "archive", 1),
        (IMAGE_MODEL, "photos", 3),
    ]
    assert references[0]["item_ids"] == ["cat-0"]
    assert sorted(references[1]["item_ids"]) == ["cat-0", "cat-1", "cat-2"]
    assert (
        await service.client.get(f"/api/media/{ref}", headers=uploader.headers)
    ).status_code == 200

    # Delete what the answer listed, then the media.
    for reference in references:
        for item_id in reference["item_ids"]:
            url = f"/api/knowledge-bases/{IMAGE_MODEL}/{reference['scope']}/items/{item_id}"
            assert (await service.client.delete(url, headers=uploader.headers)).status_code == 200
    assert await delete(service, uploader, ref) == 204
    # The other workspace's media, point and blob are untouched.
    assert store.files() == [blob(service, theirs["sha256"])]
    assert await delete(service, other, theirs["media_ref"]) == 409


async def test_media_deleted_while_a_run_embeds_it_is_not_stored(
    service: Service,
    uploader: Uploader,
    api_key: str,
    chelsea: Image.Image,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race: a run resolves its media, and a DELETE goes through before the run writes.
    The write re-checks its media under the workspace's write lock (which DELETE holds too),
    so the run answers 404 and stores nothing, rather than a point whose media is gone."""
    import anyio

    ref = (await uploader.upload(encode(chelsea, "PNG"), "image/png"))["media_ref"]
    embeddings = service.app.state.vectorsvc.embeddings
    real_embed = embeddings.embed
    embedding, resume = anyio.Event(), anyio.Event()

    async def embed_after_delete(*args: object, **kwargs: object) -> object:
        embedding.set()
        await resume.wait()
        return await real_embed(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embeddings, "embed", embed_after_delete)
    item = {"id": "cat", "image": {"media_ref": ref}}
    body = {"model": IMAGE_MODEL, "mode": "index", "scope": "photos", "input": {"items": [item]}}
    answers: list[object] = []

    async def index() -> None:
        answers.append(await service.run(api_key, body))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(index)
        await embedding.wait()
        assert await delete(service, uploader, ref) == 204  # no point uses it yet
        resume.set()
    (r,) = answers
    assert r.status_code == 404, r.text  # type: ignore[attr-defined]
    assert r.json()["error"]["code"] == "media_not_found"  # type: ignore[attr-defined]
    listing = await service.client.get(
        f"/api/knowledge-bases/{IMAGE_MODEL}/photos/items", headers=uploader.headers
    )
    assert listing.status_code in (200, 404)
    assert listing.status_code == 404 or listing.json()["data"] == [], listing.text
