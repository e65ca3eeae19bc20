"""Image runs end to end: upload real photos, index them, search by altered copies.

`image-similarity` runs the real ImageNet EfficientNet-Lite0 weights. CLIP tests run a
randomly initialised CLIP (no weights can be installed here): they test plumbing, not
relevance, and say so in their names.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, encode
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

IMAGE_MODEL = "image-similarity"
CLIP = "clip-vit-b-32"


def variants(image: Image.Image) -> dict[str, Image.Image]:
    """A flipped, a resized and a cropped copy."""
    w, h = image.size
    return {
        "flipped": ImageOps.mirror(image),
        "resized": image.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BICUBIC),
        "cropped": image.crop((int(w * 0.08), int(h * 0.08), int(w * 0.92), int(h * 0.92))),
    }


async def upload(uploader: Uploader, image: Image.Image, fmt: str = "PNG") -> str:
    content_type = {"PNG": "image/png", "JPEG": "image/jpeg"}[fmt]
    body = await uploader.upload(encode(image.convert("RGB"), fmt), content_type)
    return str(body["media_ref"])


async def run(service: Service, key: str, **body: Any) -> Any:
    r = await service.run(key, body)
    assert r.status_code == 200, r.text
    return r.json()["output"]


async def test_altered_copies_find_their_original(
    service: Service, api_key: str, photos: dict[str, Image.Image]
) -> None:
    uploader = Uploader(service, api_key)
    refs = {name: await upload(uploader, photo) for name, photo in photos.items()}
    out = await run(
        service,
        api_key,
        model=IMAGE_MODEL,
        mode="index",
        scope="photos",
        input={
            "items": [
                {"id": name, "image": {"media_ref": ref}, "metadata": {"name": name}}
                for name, ref in refs.items()
            ]
        },
    )
    assert out["counts"]["created"] == len(photos)
    assert out["collection"] == "vs__image-similarity__r1"
    for name, photo in photos.items():
        for kind, altered in variants(photo).items():
            query_ref = await upload(uploader, altered, "JPEG")
            hits = (
                await run(
                    service,
                    api_key,
                    model=IMAGE_MODEL,
                    mode="search",
                    scope="photos",
                    input={"image": {"media_ref": query_ref}},
                    params={"top_k": 3},
                )
            )["hits"]
            assert hits[0]["id"] == name, (name, kind, hits)
            # Different photos are not confused: a clear margin to the runner-up.
            assert hits[0]["score"] - hits[1]["score"] > 0.05, (name, kind, hits)
            assert hits[0]["media_ref"] == refs[name]
            assert hits[0]["thumbnail_url"] == f"/api/media/{refs[name]}/thumbnail"
            assert hits[0]["metadata"] == {"name": name}
            assert hits[0]["text"] is None


async def test_thumbnails_of_hits_are_for_the_owner_only(
    service: Service, api_key: str, photos: dict[str, Image.Image]
) -> None:
    uploader = Uploader(service, api_key)
    ref = await upload(uploader, photos["coffee"])
    await run(
        service,
        api_key,
        model=IMAGE_MODEL,
        mode="index",
        scope="s",
        input={"items": [{"id": "coffee", "image": {"media_ref": ref}}]},
    )
    hits = (
        await run(
            service,
            api_key,
            model=IMAGE_MODEL,
            mode="search",
            scope="s",
            input={"image": {"media_ref": ref}},
        )
    )["hits"]
    url = hits[0]["thumbnail_url"]
    r = await service.client.get(url, headers={"X-API-Key": api_key})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 256
    other = service.new_key("intruder")
    r = await service.client.get(url, headers={"X-API-Key": other})
    assert r.status_code == 404
    r = await service.client.get(url)
    assert r.status_code == 401


async def test_execute_embeds_images(
    service: Service, api_key: str, photos: dict[str, Image.Image]
) -> None:
    uploader = Uploader(service, api_key)
    refs = [await upload(uploader, photos[n]) for n in ("chelsea", "rocket")]
    out = await run(
        service,
        api_key,
        model=IMAGE_MODEL,
        input={"images": [{"media_ref": r} for r in refs]},
    )
    assert out["dimension"] == 1280
    assert len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 1280


async def test_another_workspaces_media_ref_is_not_found_and_nothing_is_stored(
    service: Service, api_key: str, photos: dict[str, Image.Image]
) -> None:
    other_key = service.new_key("other")
    foreign = await upload(Uploader(service, other_key), photos["rocket"])
    mine = await upload(Uploader(service, api_key), photos["chelsea"])
    r = await service.run(
        api_key,
        {
            "model": IMAGE_MODEL,
            "mode": "index",
            "scope": "s",
            "input": {
                "items": [
                    {"id": "ok", "image": {"media_ref": mine}},
                    {"id": "stolen", "image": {"media_ref": foreign}},
                ]
            },
        },
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "media_not_found"
    assert r.json()["error"]["field"] == "input.items[1].image.media_ref"
    listing = await service.client.get("/api/knowledge-bases", headers={"X-API-Key": api_key})
    assert listing.json()["count"] == 0


async def test_modalities_the_model_does_not_take_are_refused(
    service: Service, api_key: str, photos: dict[str, Image.Image]
) -> None:
    r = await service.run(
        api_key,
        {
            "model": IMAGE_MODEL,
            "mode": "index",
            "scope": "s",
            "input": {"items": [{"id": "t", "text": "a text"}]},
        },
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "modality_not_supported"
    assert r.json()["error"]["field"] == "input.items[0].text"
    ref = await upload(Uploader(service, api_key), photos["chelsea"])
    r = await service.run(
        api_key,
        {
            "model": "all-minilm-l6-v2",
            "mode": "search",
            "scope": "s",
            "input": {"image": {"media_ref": ref}},
        },
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "modality_not_supported"
    assert "text" in r.json()["error"]["message"]


async def test_clip_plumbing_random_weights_index_images_and_texts_search_both_ways(
    service: Service,
    api_key: str,
    photos: dict[str, Image.Image],
    random_clip_folder: Path,
) -> None:
    uploader = Uploader(service, api_key)
    refs = {n: await upload(uploader, photos[n]) for n in ("chelsea", "coffee", "rocket")}
    items: list[dict[str, Any]] = [
        {"id": n, "image": {"media_ref": r}, "metadata": {"kind": "photo"}} for n, r in refs.items()
    ]
    items.append({"id": "caption", "text": "a cat on a sofa", "metadata": {"kind": "text"}})
    out = await run(
        service, api_key, model=CLIP, mode="index", scope="mixed", input={"items": items}
    )
    assert out["counts"]["created"] == 4
    assert out["collection"] == "vs__clip-vit-b-32__r1"
    by_text = await run(
        service,
        api_key,
        model=CLIP,
        mode="search",
        scope="mixed",
        input={"text": "a cat"},
        params={"top_k": 10},
    )
    assert {h["id"] for h in by_text["hits"]} == {"chelsea", "coffee", "rocket", "caption"}
    by_image = await run(
        service,
        api_key,
        model=CLIP,
        mode="search",
        scope="mixed",
        input={"image": {"media_ref": refs["coffee"]}},
        params={"top_k": 1},
    )
    # Exact search: the identical image is its own nearest neighbour even with random weights.
    assert by_image["hits"][0]["id"] == "coffee"
    assert by_image["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    photos_only = await run(
        service,
        api_key,
        model=CLIP,
        mode="search",
        scope="mixed",
        input={"text": "x"},
        params={"top_k": 10, "filter": {"kind": "photo"}},
    )
    assert len(photos_only["hits"]) == 3
    listing = (
        await service.client.get("/api/knowledge-bases", headers={"X-API-Key": api_key})
    ).json()
    assert listing["data"][0]["modality"] == "mixed"


async def test_clip_plumbing_random_weights_same_scope_under_two_models_is_two_collections(
    service: Service,
    api_key: str,
    photos: dict[str, Image.Image],
    random_clip_folder: Path,
) -> None:
    uploader = Uploader(service, api_key)
    ref = await upload(uploader, photos["astronaut"])
    for model in (IMAGE_MODEL, CLIP):
        await run(
            service,
            api_key,
            model=model,
            mode="index",
            scope="same",
            input={"items": [{"id": f"from-{model}", "image": {"media_ref": ref}}]},
        )
    listing = (
        await service.client.get("/api/knowledge-bases", headers={"X-API-Key": api_key})
    ).json()["data"]
    assert {(e["model"], e["collection"], e["scope"]) for e in listing} == {
        (IMAGE_MODEL, "vs__image-similarity__r1", "same"),
        (CLIP, "vs__clip-vit-b-32__r1", "same"),
    }
    for model in (IMAGE_MODEL, CLIP):
        hits = (
            await run(
                service,
                api_key,
                model=model,
                mode="search",
                scope="same",
                input={"image": {"media_ref": ref}},
            )
        )["hits"]
        assert [h["id"] for h in hits] == [f"from-{model}"]


async def test_clip_without_weights_is_503_model_unavailable(
    tmp_path: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    empty_models = tmp_path / "no-models"
    empty_models.mkdir()
    settings = make_settings(tmp_path / "data", empty_models)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        r = await svc.run(key, {"model": CLIP, "input": {"text": "a cat"}})
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "model_unavailable"
        assert "clip-vit-b-32" in error["message"]
        assert str(empty_models / "clip-vit-b-32") in error["message"]
