"""Images in runs: decoded a batch at a time, once per distinct image, made small while they
are decoded, and no more decoded pixels per run than the setting allows.

Memory itself is measured on a `vectorsvc serve` process in
tests/reliability/test_image_memory.py; here the real app runs in process, with the real
EfficientNet-Lite0 model and real photos.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, encode
from vectorsvc.media.content import load_rgb
from vectorsvc.media.objects import MediaObject
from vectorsvc.media.service import MediaService
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec
from vectorsvc.runs.content import IMAGE_BATCH, MODEL_IMAGE_MAX_ASPECT, MODEL_IMAGE_MIN_SIDE

pytestmark = pytest.mark.anyio

MODEL = "image-similarity"
CHELSEA_PIXELS = 451 * 300


def tagged_png(image: Image.Image, tag: str) -> bytes:
    """The same pixels as other tags, different bytes (a text chunk): a distinct upload."""
    info = PngImagePlugin.PngInfo()
    info.add_text("tag", tag)
    return encode(image, "PNG", pnginfo=info)


async def upload(uploader: Uploader, data: bytes, content_type: str = "image/png") -> str:
    return str((await uploader.upload(data, content_type))["media_ref"])


def images_input(refs: list[str]) -> dict[str, Any]:
    return {"images": [{"media_ref": ref} for ref in refs]}


async def balance(service: Service, key: str) -> str:
    r = await service.client.get("/api/billing/wallet", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return str(r.json()["balance"])


async def test_repeats_share_one_decode_and_images_decode_a_batch_at_a_time(
    service: Service,
    api_key: str,
    photos: dict[str, Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploader = Uploader(service, api_key)
    distinct = 2 * IMAGE_BATCH + 3
    refs = [await upload(uploader, tagged_png(photos["chelsea"], str(i))) for i in range(distinct)]
    other = await upload(uploader, encode(photos["coffee"], "PNG"))

    media: MediaService = service.app.state.vectorsvc.media
    real_load = media.load_image
    decoded: list[str] = []
    held: list[weakref.ref[Image.Image]] = []
    alive_at_decode: list[int] = []

    def load_image(item: MediaObject, **kwargs: Any) -> Image.Image:
        # A spy: the real decode runs; it records what is decoded and what is still held.
        alive_at_decode.append(sum(ref() is not None for ref in held))
        decoded.append(item.media_ref)
        image = real_load(item, **kwargs)
        held.append(weakref.ref(image))
        return image

    monkeypatch.setattr(media, "load_image", load_image)
    # The first image five times over, the coffee photo twice, the rest once.
    sent = [refs[0], other, *refs, refs[0], other, refs[0], refs[0]]
    r = await service.run(api_key, {"model": MODEL, "mode": "execute", "input": images_input(sent)})
    assert r.status_code == 200, r.text
    vectors = np.array(r.json()["output"]["embeddings"])

    assert sorted(decoded) == sorted([*refs, other])  # each distinct image decoded once
    # Never more decoded images held than one batch: the previous batches were let go.
    assert max(alive_at_decode) < IMAGE_BATCH, alive_at_decode
    # Every reference got its image's vector; equal pixels give equal vectors.
    assert len(vectors) == len(sent)
    chelsea_rows = [i for i, ref in enumerate(sent) if ref != other]
    assert np.allclose(vectors[chelsea_rows], vectors[0], atol=1e-5)
    assert np.allclose(vectors[[1, len(sent) - 3]], vectors[1])
    assert float(vectors[0] @ vectors[1]) < 0.9


async def test_runs_over_the_decoded_pixel_limit_are_refused_and_cost_and_store_nothing(
    tmp_path: Path,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    photos: dict[str, Image.Image],
) -> None:
    # Two chelsea photos' worth of pixels (and a little more) per run.
    limit = 2 * CHELSEA_PIXELS + 1000
    settings = make_settings(tmp_path / "data", models_dir, max_decoded_pixels_per_run=limit)
    async with running_service(settings, embedder_loader) as service:
        await _over_the_limit(service, photos, limit)


async def _over_the_limit(service: Service, photos: dict[str, Image.Image], limit: int) -> None:
    api_key = service.new_key("acme")
    uploader = Uploader(service, api_key)
    chelsea = photos["chelsea"]
    a, b, c = [await upload(uploader, tagged_png(chelsea, tag)) for tag in "abc"]
    w, h = chelsea.size
    big = await upload(uploader, encode(chelsea.resize((w * 2, h * 2)), "JPEG"), "image/jpeg")

    # Repeats of one image count once: 2 distinct images are within the limit.
    ok = await service.run(
        api_key, {"model": MODEL, "mode": "execute", "input": images_input([a, a, b, a, b, a])}
    )
    assert ok.status_code == 200, ok.text
    opening = await balance(service, api_key)

    refused = [
        ({"mode": "execute", "input": images_input([a, b, a, c])}, "input.images[3].media_ref"),
        (
            {
                "mode": "index",
                "scope": "s",
                "input": {
                    "items": [
                        {"id": str(i), "image": {"media_ref": ref}}
                        for i, ref in enumerate([a, b, a, c])
                    ]
                },
            },
            "input.items[3].image.media_ref",
        ),
        (
            {"mode": "search", "scope": "s", "input": {"image": {"media_ref": big}}},
            "input.image.media_ref",
        ),
    ]
    for body, field in refused:
        r = await service.run(api_key, {"model": MODEL, **body})
        assert r.status_code == 422, r.text[:300]
        error = r.json()["error"]
        assert error["code"] == "too_many_decoded_pixels"
        assert error["field"] == field
        assert "VECTORSVC_MAX_DECODED_PIXELS_PER_RUN" in error["message"]
        assert str(limit) in error["message"]

    assert await balance(service, api_key) == opening  # nothing charged
    listing = await service.client.get("/api/knowledge-bases", headers={"X-API-Key": api_key})
    assert listing.json()["count"] == 0  # nothing stored


async def test_background_runs_decode_each_distinct_image_once_per_chunk(
    tmp_path: Path,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    photos: dict[str, Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=5)
    async with running_service(settings, embedder_loader) as service:
        key = service.new_key("acme")
        uploader = Uploader(service, key)
        one = await upload(uploader, encode(photos["rocket"], "PNG"))
        two = await upload(uploader, encode(photos["coffee"], "PNG"))
        media: MediaService = service.app.state.vectorsvc.media
        real_load = media.load_image
        decoded: list[str] = []

        def load_image(item: MediaObject, **kwargs: Any) -> Image.Image:
            decoded.append(item.media_ref)
            return real_load(item, **kwargs)

        monkeypatch.setattr(media, "load_image", load_image)
        refs = [one, two, one, one, two] + [one] * 5  # two chunks of five
        r = await service.run(
            key,
            {
                "model": MODEL,
                "mode": "index",
                "scope": "bg",
                "input": {
                    "items": [
                        {"id": str(i), "image": {"media_ref": ref}} for i, ref in enumerate(refs)
                    ]
                },
                "options": {"background": True},
            },
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        for _ in range(600):
            status = (
                await service.client.get(f"/api/runs/{run_id}", headers={"X-API-Key": key})
            ).json()
            if status["status"] in ("succeeded", "failed", "cancelled"):
                break
            await anyio.sleep(0.05)
        assert status["status"] == "succeeded", status
        assert status["progress"]["done"] == len(refs)
        assert sorted(decoded) == sorted([one, two, one])  # chunk 1: both; chunk 2: one


async def test_concurrent_runs_decode_no_more_images_at_once_than_the_setting(
    tmp_path: Path,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    photos: dict[str, Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, image_decode_concurrency=1)
    async with running_service(settings, embedder_loader) as service:
        key = service.new_key("acme")
        uploader = Uploader(service, key)
        refs = [await upload(uploader, tagged_png(photos["rocket"], str(i))) for i in range(6)]
        media: MediaService = service.app.state.vectorsvc.media
        real_load = media.load_image
        lock = threading.Lock()
        decoding = 0
        most = 0

        def load_image(item: MediaObject, **kwargs: Any) -> Image.Image:
            nonlocal decoding, most
            with lock:
                decoding += 1
                most = max(most, decoding)
            try:
                time.sleep(0.05)  # a large image takes this long and more
                return real_load(item, **kwargs)
            finally:
                with lock:
                    decoding -= 1

        monkeypatch.setattr(media, "load_image", load_image)
        responses: list[Any] = []

        async def one(ref: str) -> None:
            body = {"model": MODEL, "mode": "execute", "input": images_input([ref])}
            responses.append(await service.run(key, body))

        async with anyio.create_task_group() as group:
            for ref in refs:
                group.start_soon(one, ref)
        assert [r.status_code for r in responses] == [200] * len(refs)
        assert most == 1


# -- decoding for the models ------------------------------------------------------------------


def _decode(path: Path) -> Image.Image:
    return load_rgb(
        path,
        max_pixels=50_000_000,
        min_side=MODEL_IMAGE_MIN_SIDE,
        max_aspect=MODEL_IMAGE_MAX_ASPECT,
    )


def test_large_images_are_made_small_while_decoding(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    coffee = photos["coffee"]  # 600x400
    png = tmp_path / "big.png"
    coffee.resize((3000, 2000)).save(png)
    assert _decode(png).size == (1000, 667)  # averaged down by 3: no side below 512
    jpeg = tmp_path / "big.jpg"
    coffee.resize((4096, 3072)).save(jpeg, quality=90)
    assert _decode(jpeg).size == (1024, 768)  # decoded at 1/4 scale
    # Photos of a usual size decode exactly as for a thumbnail.
    for name, photo in photos.items():
        path = tmp_path / f"{name}.png"
        photo.save(path)
        same = load_rgb(path, max_pixels=50_000_000)
        assert np.array_equal(np.asarray(_decode(path)), np.asarray(same)), name


def test_downscaled_decodes_keep_transparency_white_and_exif_upright(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (2000, 1200), (0, 0, 0, 0))  # transparent black...
    rgba.paste((200, 30, 30, 255), (1000, 0, 2000, 1200))  # ...left of an opaque red half
    path = tmp_path / "alpha.png"
    rgba.save(path)
    image = _decode(path)
    assert (image.mode, image.size) == ("RGB", (1000, 600))
    assert image.getpixel((10, 300)) == (255, 255, 255)
    assert image.getpixel((990, 300)) == (200, 30, 30)
    # Along the edge, transparent black does not darken the red (premultiplied averaging).
    assert image.getpixel((500, 300)) in ((255, 255, 255), (200, 30, 30))

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    wide = Image.new("RGB", (2400, 1600), (0, 0, 255))
    wide.paste((255, 255, 0), (0, 0, 200, 1600))  # a yellow band on the left
    path = tmp_path / "rotated.jpg"
    wide.save(path, exif=exif, quality=95)
    upright = _decode(path)
    assert upright.size == (800, 1200)  # 1/2 scale, then turned upright
    reference = ImageOps.exif_transpose(Image.open(path)).resize(upright.size)
    assert upright.getpixel((400, 20)) == pytest.approx(reference.getpixel((400, 20)), abs=12)


def test_a_very_long_image_keeps_its_middle(tmp_path: Path) -> None:
    strip = Image.new("RGB", (20_000, 60), (10, 120, 10))
    path = tmp_path / "strip.png"
    strip.save(path)
    assert _decode(path).size == (60 * MODEL_IMAGE_MAX_ASPECT, 60)
    tall = tmp_path / "tall.png"
    strip.transpose(Image.Transpose.ROTATE_90).save(tall)
    assert _decode(tall).size == (60, 60 * MODEL_IMAGE_MAX_ASPECT)


async def test_vectors_of_downscaled_decodes_stay_close_to_full_resolution(
    tmp_path: Path,
    photos: dict[str, Image.Image],
    embedder_loader: Callable[[ModelSpec], Embedder],
) -> None:
    embedder = embedder_loader(ModelRegistry.from_file().get(MODEL))
    for name in ("coffee", "astronaut"):
        photo = photos[name].convert("RGB")
        w, h = photo.size
        for fmt in ("PNG", "JPEG"):
            path = tmp_path / f"{name}.{fmt.lower()}"
            photo.resize((w * 5, h * 5), Image.Resampling.BICUBIC).save(path, fmt)
            full = load_rgb(path, max_pixels=50_000_000)
            small = _decode(path)
            assert max(small.size) < max(full.size)
            vectors = embedder.embed_images([full, small])
            assert float(vectors[0] @ vectors[1]) > 0.995, (name, fmt)
