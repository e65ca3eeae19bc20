"""Marketplace API: listing, paging, filters, the model page, 404, auth, availability."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embedders.base import Embedder, WeightsUnavailable
from tests.harness import Service, make_settings, running_service
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec

pytestmark = pytest.mark.anyio

REGISTRY = ModelRegistry.from_file()
SLUGS = [m.slug for m in REGISTRY.models]


async def get(service: Service, key: str, path: str, status: int = 200, /, **params: Any) -> Any:
    r = await service.client.get(path, params=params, headers={"X-API-Key": key})
    assert r.status_code == status, r.text
    return r.json()


async def test_listing_shows_every_published_model(service: Service, api_key: str) -> None:
    page = await get(service, api_key, "/api/marketplace/models")
    assert page["count"] == len(SLUGS)
    assert [m["slug"] for m in page["data"]] == SLUGS
    assert page["next_cursor"] is None
    minilm = next(m for m in page["data"] if m["slug"] == "all-minilm-l6-v2")
    assert minilm["modalities"] == ["text"]
    assert minilm["dimension"] == 384
    assert minilm["available"] is True and minilm["unavailable_reason"] is None
    assert minilm["pricing"]["index"] == {
        "unit": "chunk",  # a long text is indexed as several chunks, each billed
        "credits_per_unit": "0.0002",
        "micro_credits_per_unit": 200,
    }
    # The platform resolves the hardware and collections; listings do not leak them.
    assert "hardware_tier" not in minilm and "embedder" not in minilm


async def test_listing_pages_with_a_cursor(service: Service, api_key: str) -> None:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = await get(service, api_key, "/api/marketplace/models", **params)
        assert page["count"] == len(SLUGS)
        seen += [m["slug"] for m in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == SLUGS
    error = await get(service, api_key, "/api/marketplace/models", 422, cursor="%%%")
    assert error["error"]["field"] == "cursor"


async def test_listing_filters_by_modality_and_mode(service: Service, api_key: str) -> None:
    page = await get(service, api_key, "/api/marketplace/models", modality="image")
    expected = [m.slug for m in REGISTRY.models if "image" in m.modalities]
    assert [m["slug"] for m in page["data"]] == expected
    assert page["count"] == len(expected)
    page = await get(service, api_key, "/api/marketplace/models", modality="text", mode="search")
    assert "all-minilm-l6-v2" in [m["slug"] for m in page["data"]]
    assert all("text" in m["modalities"] and "search" in m["modes"] for m in page["data"])


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("modality", "audio", ["text", "image"]),
        ("mode", "transcribe", ["execute", "index", "search", "delete"]),
    ],
)
async def test_invalid_filter_lists_the_allowed_values(
    service: Service, api_key: str, field: str, value: str, allowed: list[str]
) -> None:
    body = await get(service, api_key, "/api/marketplace/models", 422, **{field: value})
    error = body["error"]
    assert error["code"] == "invalid_filter"
    assert error["field"] == field
    assert error["details"]["allowed"] == allowed
    assert all(a in error["message"] for a in allowed)


async def test_model_page_has_every_mode_contract_and_example(
    service: Service, api_key: str
) -> None:
    page = await get(service, api_key, "/api/marketplace/models/all-minilm-l6-v2")
    assert page["hardware_tier"] == "cpu-small"
    assert list(page["contracts"]) == page["modes"] == ["execute", "index", "search", "delete"]
    search = page["contracts"]["search"]
    assert search["input_schema"]["required"] == ["text"]
    params = search["params_schema"]["properties"]
    assert set(params) == {"top_k", "filter", "score_threshold", "retrieval", "fusion"}
    # The retrieval and its default, as measured on SciFact (docs/performance.md).
    assert params["retrieval"]["enum"] == ["hybrid", "dense", "keyword"]
    assert params["retrieval"]["default"] == "hybrid"
    assert (params["fusion"]["enum"], params["fusion"]["default"]) == (["dbsf", "rrf"], "dbsf")
    assert search["price"]["unit"] == "query"
    assert search["example_request"]["model"] == "all-minilm-l6-v2"
    assert search["example_request"]["mode"] == "search"
    assert search["example_request"]["scope"] == "playground"
    assert "scope" not in page["contracts"]["execute"]["example_request"]


async def test_unknown_model_is_404(service: Service, api_key: str) -> None:
    body = await get(service, api_key, "/api/marketplace/models/no-such-model", 404)
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["field"] == "slug"
    assert "GET /api/marketplace/models" in body["error"]["message"]


@pytest.mark.parametrize(
    "path", ["/api/marketplace/models", "/api/marketplace/models/all-minilm-l6-v2"]
)
async def test_marketplace_needs_credentials(service: Service, path: str) -> None:
    r = await service.client.get(path)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_credentials"


async def test_a_model_whose_weights_are_missing_is_listed_as_unavailable(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    def loader(spec: ModelSpec) -> Embedder:
        if spec.slug == "all-minilm-l6-v2":
            raise WeightsUnavailable(spec.slug, "no weights on this server", "install them")
        return embedder_loader(spec)

    settings = make_settings(tmp_path / "data", models_dir)
    async with running_service(settings, loader) as service:
        key = service.new_key("acme")
        r = await service.run(
            key, {"model": "all-minilm-l6-v2", "mode": "execute", "input": {"text": "hi"}}
        )
        assert r.status_code == 503, r.text
        page = await get(service, key, "/api/marketplace/models/all-minilm-l6-v2")
        assert page["available"] is False
        assert page["unavailable_reason"] == "no weights on this server"
