"""Images: a real photo in every supported format, decoding for runs, thumbnails, and
decompression bombs refused before any pixel is decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.harness import Service
from tests.helpers import Uploader, encode
from tests.media.conftest import (
    MAX_IMAGE_PIXELS,
    media_service,
    png_declaring,
    workspace_id,
)
from tests.media.stores import StoreView
from vectorsvc.errors import ServiceError
from vectorsvc.media.objects import load_image, resolve_media, thumbnail_bytes

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
async def test_real_photo_round_trip(
    service: Service, uploader: Uploader, chelsea: Image.Image, fmt: str, content_type: str
) -> None:
    data = encode(chelsea, fmt)
    done = await uploader.upload(data, content_type)
    media_ref = done["media_ref"]
    r = await service.client.get(f"/api/media/{media_ref}", headers=uploader.headers)
    assert r.status_code == 200
    meta = r.json()
    assert (meta["width"], meta["height"], meta["content_type"]) == (451, 300, content_type)

    # What the runs code does with a media_ref:
    media = media_service(service).resolve(
        workspace_id=workspace_id(service, "acme"), media_ref=media_ref
    )
    with media.open() as stream:
        assert stream.read() == data
    image = media_service(service).load_image(media)
    assert (image.mode, image.size) == ("RGB", (451, 300))
    if fmt == "PNG":  # lossless: the decoded pixels are the photo's
        assert np.array_equal(np.asarray(image), np.asarray(chelsea))

    r = await service.client.get(f"/api/media/{media_ref}/thumbnail", headers=uploader.headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG"
    assert thumb.size == (256, 170)  # the longer side is 256, aspect kept


async def test_thumbnail_of_a_non_image_is_422(service: Service, uploader: Uploader) -> None:
    done = await uploader.upload(b"plain words\n", "text/plain", "file")
    r = await service.client.get(
        f"/api/media/{done['media_ref']}/thumbnail", headers=uploader.headers
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "not_an_image"


async def test_load_image_applies_exif_orientation(
    service: Service, uploader: Uploader, chelsea: Image.Image
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    done = await uploader.upload(encode(chelsea, "JPEG", exif=exif), "image/jpeg")
    media = resolve_media(
        service.db,
        store=media_service(service).blobs,
        workspace_id=workspace_id(service, "acme"),
        media_ref=done["media_ref"],
    )
    assert load_image(media).size == (300, 451)
    thumb = Image.open(io.BytesIO(thumbnail_bytes(media, 128)))
    assert thumb.height == 128 and thumb.width < thumb.height  # upright: portrait


async def test_transparent_pixels_load_as_white(service: Service, uploader: Uploader) -> None:
    done = await uploader.upload(
        encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"), "image/png"
    )
    media = media_service(service).resolve(
        workspace_id=workspace_id(service, "acme"), media_ref=done["media_ref"]
    )
    assert load_image(media).getpixel((0, 0)) == (255, 255, 255)


# -- decompression bombs --------------------------------------------------------------------


async def test_bomb_header_beyond_pillows_limit_is_refused(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    # 30000 x 30000 = 900 MP: Pillow itself raises DecompressionBombError on open.
    bomb = png_declaring(30_000, 30_000)
    assert len(bomb) < 200
    ticket = await uploader.init_ok(bomb, "image/png")
    r = await uploader.put(ticket["upload_url"], bomb)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "image_too_many_pixels"
    assert "VECTORSVC_MAX_IMAGE_PIXELS" in error["message"]
    assert store.files() == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_bomb_header_in_pillows_warning_range_is_refused(uploader: Uploader) -> None:
    bomb = png_declaring(10_000, 10_000)  # 100 MP: Pillow only warns
    ticket = await uploader.init_ok(bomb, "image/png")
    r = await uploader.put(ticket["upload_url"], bomb)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "image_too_many_pixels"
    assert "10000x10000" in r.json()["error"]["message"]


async def test_real_image_over_the_configured_pixel_limit_is_refused(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    # A valid 1-bit image a little over the (test) limit compresses to a few hundred bytes.
    image = Image.new("1", (1_100, MAX_IMAGE_PIXELS // 1_000))
    data = encode(image, "PNG")
    assert len(data) < 10_000
    ticket = await uploader.init_ok(data, "image/png")
    r = await uploader.put(ticket["upload_url"], data)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "image_too_many_pixels"
    assert store.files() == []


async def test_load_image_guards_pixels_too(service: Service, uploader: Uploader) -> None:
    data = encode(Image.new("L", (100, 100)), "PNG")
    done = await uploader.upload(data, "image/png")
    media = media_service(service).resolve(
        workspace_id=workspace_id(service, "acme"), media_ref=done["media_ref"]
    )
    with pytest.raises(ServiceError) as caught:
        load_image(media, max_pixels=100 * 100 - 1)
    assert caught.value.code == "image_too_many_pixels"
