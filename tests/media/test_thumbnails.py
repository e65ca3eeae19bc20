"""Thumbnails: a small fixed set of sizes, and a cache per workspace (bounded in bytes) that
never tells one workspace what another holds."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.harness import Service
from tests.helpers import Uploader, encode
from tests.media.stores import StoreView

pytestmark = pytest.mark.anyio

SIZES = (64, 128, 256, 512)


async def thumbnail(service: Service, uploader: Uploader, ref: str, max_side: int) -> Image.Image:
    r = await service.client.get(
        f"/api/media/{ref}/thumbnail?max_side={max_side}", headers=uploader.headers
    )
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content))


def test_max_side_rounds_up_to_a_fixed_size() -> None:
    from vectorsvc.media.thumbnails import THUMBNAIL_SIZES, thumbnail_side

    assert THUMBNAIL_SIZES == SIZES
    assert [thumbnail_side(n) for n in (16, 64, 65, 100, 128, 200, 256, 300, 512)] == [
        64, 64, 128, 128, 128, 256, 256, 512, 512
    ]  # fmt: skip
    assert thumbnail_side(513) == thumbnail_side(2048) == 512


async def test_any_max_side_is_served_at_one_of_four_sizes(
    store: StoreView, service: Service, uploader: Uploader, chelsea: Image.Image
) -> None:
    ref = (await uploader.upload(encode(chelsea, "JPEG"), "image/jpeg"))["media_ref"]
    assert (await thumbnail(service, uploader, ref, 100)).size == (128, 85)
    assert (await thumbnail(service, uploader, ref, 2048)).size == (451, 300)  # never upscaled
    assert max((await thumbnail(service, uploader, ref, 16)).size) == 64
    # Twenty different sizes asked for: four renders at most, all cached.
    for max_side in range(16, 2048, 101):
        await thumbnail(service, uploader, ref, max_side)
    cache = service.app.state.vectorsvc.media.thumbnails
    assert {side for _, _, side in cache.keys()} == set(SIZES)
    assert cache.misses == len(SIZES)
    # Nothing is written beside the blob any more.
    assert [name.rsplit("/", 1)[-1] for name in store.files()] == [
        (await service.client.get(f"/api/media/{ref}", headers=uploader.headers)).json()["sha256"]
    ]


async def test_max_side_out_of_range_is_422(
    service: Service, uploader: Uploader, chelsea: Image.Image
) -> None:
    ref = (await uploader.upload(encode(chelsea, "JPEG"), "image/jpeg"))["media_ref"]
    for bad in (0, 15, 2049, 100000):
        r = await service.client.get(
            f"/api/media/{ref}/thumbnail?max_side={bad}", headers=uploader.headers
        )
        assert r.status_code == 422, bad
        assert r.json()["error"]["field"] == "max_side"


async def test_the_cache_is_per_workspace(
    store: StoreView, service: Service, uploader: Uploader, chelsea: Image.Image
) -> None:
    """Two workspaces upload the same bytes (one blob). The first one's cached thumbnail is
    not served to the second: the second's is rendered from the blob, so how fast it comes
    tells it nothing about the first. Seen here by changing the blob between the two."""
    other = Uploader(service, service.new_key("other-co"))
    data = encode(chelsea, "PNG")
    mine = await uploader.upload(data, "image/png")
    theirs = await other.upload(data, "image/png")
    assert mine["sha256"] == theirs["sha256"]
    first = await thumbnail(service, uploader, mine["media_ref"], 64)
    assert first.getpixel((32, 20)) != (0, 0, 0)
    store.write(
        store.blob(mine["sha256"]), encode(Image.new("RGB", chelsea.size, (0, 0, 0)), "PNG")
    )
    # The other workspace's first request renders: it sees the blob as it is now.
    assert (await thumbnail(service, other, theirs["media_ref"], 64)).getpixel((32, 20)) == (
        0,
        0,
        0,
    )
    # The first workspace's is its own cached copy.
    again = await thumbnail(service, uploader, mine["media_ref"], 64)
    assert again.getpixel((32, 20)) == first.getpixel((32, 20))
    cache = service.app.state.vectorsvc.media.thumbnails
    workspaces = {workspace for workspace, _, _ in cache.keys()}
    assert len(workspaces) == 2


def test_the_cache_is_bounded_in_bytes_and_drops_the_least_recently_used() -> None:
    from vectorsvc.media.thumbnails import ThumbnailCache

    cache = ThumbnailCache(max_bytes=250)
    for n in range(5):
        cache.put(("ws_a", f"media_{n}", 64), bytes(100))
        assert cache.size_bytes <= 250
    assert len(cache) == 2
    assert cache.get(("ws_a", "media_4", 64)) is not None
    assert cache.get(("ws_a", "media_0", 64)) is None
    cache.get(("ws_a", "media_3", 64))  # now the most recent
    cache.put(("ws_b", "media_9", 64), bytes(100))
    assert cache.keys() == [("ws_a", "media_3", 64), ("ws_b", "media_9", 64)]
    cache.put(("ws_a", "big", 64), bytes(251))  # larger than the whole cache: not kept
    assert ("ws_a", "big", 64) not in cache.keys()
    cache.discard("ws_b", "media_9")
    assert cache.keys() == [("ws_a", "media_3", 64)] and cache.size_bytes == 100


async def test_a_zero_cache_still_serves(
    service: Service, uploader: Uploader, chelsea: Image.Image
) -> None:
    service.app.state.vectorsvc.media.thumbnails.max_bytes = 0
    ref = (await uploader.upload(encode(chelsea, "JPEG"), "image/jpeg"))["media_ref"]
    assert max((await thumbnail(service, uploader, ref, 256)).size) == 256
    assert len(service.app.state.vectorsvc.media.thumbnails) == 0
