"""A media_ref and an upload belong to one workspace: to every other workspace they do not
exist (404, never 403, so that existence is not leaked)."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.harness import Service
from tests.helpers import Uploader, encode
from tests.media.conftest import media_service, workspace_id
from tests.media.stores import StoreView
from vectorsvc.errors import NotFound

pytestmark = pytest.mark.anyio

PNG = encode(Image.new("RGB", (20, 20), (0, 90, 200)), "PNG")


@pytest.fixture
def other(service: Service) -> Uploader:
    return Uploader(service, service.new_key("other-co"))


async def test_complete_of_another_workspaces_upload_is_404(
    uploader: Uploader, other: Uploader
) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    r = await other.complete(ticket["upload_id"])
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "upload_not_found"
    # Nor after the owner completed it.
    mine = await uploader.complete(ticket["upload_id"])
    assert mine.status_code == 200
    r = await other.complete(ticket["upload_id"])
    assert r.status_code == 404
    assert "media_ref" not in r.text


async def test_metadata_and_thumbnail_are_404_to_other_workspaces(
    service: Service, uploader: Uploader, other: Uploader
) -> None:
    ref = (await uploader.upload(PNG, "image/png"))["media_ref"]
    for path in (f"/api/media/{ref}", f"/api/media/{ref}/thumbnail"):
        assert (await service.client.get(path, headers=uploader.headers)).status_code == 200
        r = await service.client.get(path, headers=other.headers)
        assert r.status_code == 404, path
        error = r.json()["error"]
        assert error["code"] == "media_not_found"
        # The same answer as for a ref that never existed.
        unknown = await service.client.get(
            path.replace(ref, "media_00000000000000000000000000000000"), headers=other.headers
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == error["code"]
    assert (await service.client.get(f"/api/media/{ref}")).status_code == 401


async def test_resolve_for_another_workspace_names_the_field(
    service: Service, uploader: Uploader, other: Uploader
) -> None:
    ref = (await uploader.upload(PNG, "image/png"))["media_ref"]
    media = media_service(service)
    assert media.resolve(workspace_id=workspace_id(service, "acme"), media_ref=ref).sha256
    with pytest.raises(NotFound) as caught:
        media.resolve(
            workspace_id=workspace_id(service, "other-co"),
            media_ref=ref,
            field="input.items[0].media_ref",
        )
    assert caught.value.code == "media_not_found"
    assert caught.value.field == "input.items[0].media_ref"
    assert caught.value.message.startswith("input.items[0].media_ref:")


async def test_the_same_bytes_in_two_workspaces_are_two_refs_on_one_blob(
    store: StoreView, service: Service, uploader: Uploader, other: Uploader
) -> None:
    mine = await uploader.upload(PNG, "image/png")
    theirs = await other.upload(PNG, "image/png")
    assert mine["media_ref"] != theirs["media_ref"]
    assert store.files() == [store.blob(mine["sha256"])]
    r = await service.client.get(f"/api/media/{theirs['media_ref']}", headers=uploader.headers)
    assert r.status_code == 404
