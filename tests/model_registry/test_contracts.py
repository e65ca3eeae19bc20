"""Mode contracts: examples satisfy them, violations name their field, and the contracts agree
with the runs code (each example succeeds through POST /api/runs; a violation is refused)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from tests.harness import Service
from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.registry import ModelRegistry, example_request, validate_run_contract

REGISTRY = ModelRegistry.from_file()
MINILM = REGISTRY.get("all-minilm-l6-v2")
CLIP = (
    REGISTRY.get("clip-vit-b-32") if "clip-vit-b-32" in {m.slug for m in REGISTRY.models} else None
)
EXAMPLE_MEDIA_REF = "media_0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("slug", "mode"), [(m.slug, mode) for m in REGISTRY.models for mode in m.modes]
)
def test_every_example_satisfies_its_own_contract(slug: str, mode: str) -> None:
    spec = REGISTRY.get(slug)
    body = example_request(spec, mode)
    validate_run_contract(spec, mode, body["input"], body["params"])


# (mode, input, params, field the error names, words the message must hold)
VIOLATIONS: list[tuple[str, dict[str, Any], dict[str, Any], str, list[str]]] = [
    ("execute", {}, {}, "input", ["exactly one of", "text", "texts"]),
    ("execute", {"text": "a", "texts": ["b"]}, {}, "input", ["exactly one of"]),
    ("execute", {"text": 5}, {}, "input.text", ["string"]),
    ("execute", {"image": {"media_ref": "m"}}, {}, "input.image", ["unknown", "text, texts"]),
    ("execute", {"texts": []}, {}, "input.texts", ["at least 1"]),
    ("execute", {"text": "a"}, {"top_k": 3}, "params.top_k", ["unknown", "nothing"]),
    (
        "index",
        {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "c"}]},
        {},
        "input.items[2].text",
        ["required", "id, text, metadata"],
    ),
    ("index", {"items": [{"id": "a", "text": "   "}]}, {}, "input.items[0].text", ["whitespace"]),
    ("index", {"items": [{"id": "", "text": "x"}]}, {}, "input.items[0].id", ["at least 1"]),
    (
        "index",
        {"items": [{"id": "a", "text": "x", "metadata": {"bad key": 1}}]},
        {},
        "input.items[0].metadata.bad key",
        ["letters, digits"],
    ),
    ("index", {"items": [{"id": "a", "text": "x", "tags": []}]}, {}, "input.items[0].tags", []),
    ("search", {"text": "q"}, {"top_k": 0}, "params.top_k", [">= 1"]),
    ("search", {"text": "q"}, {"score_threshold": "1"}, "params.score_threshold", ["a number"]),
    (
        "search",
        {"text": "q"},
        {"retrieval": "bm25"},
        "params.retrieval",
        ["hybrid, dense, keyword"],
    ),
    ("search", {"text": "q"}, {"filter": {"lang": 1.5}}, "params.filter.lang", ["equality"]),
    ("search", {"text": "q"}, {"filter": {"y": {"gte": "x"}}}, "params.filter.y", ["range"]),
    ("search", {"text": "q"}, {"k": 3}, "params.k", ["top_k, filter, score_threshold, retrieval"]),
    ("search", {}, {}, "input.text", ["required"]),
    ("delete", {}, {}, "input", ["exactly one of", "ids", "filter"]),
    ("delete", {"filter": {}}, {}, "input.filter", ["at least 1"]),
    ("delete", {"ids": ["a"], "filter": {"x": 1}}, {}, "input", ["exactly one of"]),
]


# Refused by the contract, while the runs' pydantic models (lax mode) still coerce them.
STRICTER_THAN_RUNS: list[tuple[str, dict[str, Any], dict[str, Any], str, list[str]]] = [
    ("search", {"text": "q"}, {"top_k": "5"}, "params.top_k", ["integer"]),
]


@pytest.mark.parametrize(
    ("mode", "input", "params", "field", "words"), VIOLATIONS + STRICTER_THAN_RUNS
)
def test_a_violation_names_its_field_and_what_is_allowed(
    mode: str, input: dict[str, Any], params: dict[str, Any], field: str, words: list[str]
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_run_contract(MINILM, mode, input, params)
    error = caught.value
    assert error.field == field
    assert error.message.startswith(f"{field}: ")
    for word in words:
        assert word in error.message
    assert error.details is not None and error.details["errors"][0]["field"] == field


def test_every_violation_is_listed_in_details() -> None:
    items = [{"id": "a"}, {"id": "b", "text": 3}]
    with pytest.raises(ValidationFailed) as caught:
        validate_run_contract(MINILM, "index", {"items": items}, {"x": 1})
    assert caught.value.details is not None
    fields = [e["field"] for e in caught.value.details["errors"]]
    assert fields == ["input.items[0].text", "input.items[1].text", "params.x"]


@pytest.mark.skipif(CLIP is None, reason="no text-and-image model in the registry")
def test_a_two_modality_item_needs_exactly_one_content() -> None:
    assert CLIP is not None
    with pytest.raises(ValidationFailed) as caught:
        validate_run_contract(CLIP, "index", {"items": [{"id": "a"}]}, {})
    assert caught.value.field == "input.items[0]"
    assert "exactly one of 'text' or 'image'" in caught.value.message


def test_an_unknown_mode_is_refused_with_the_models_modes() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_run_contract(MINILM, "transcribe", {}, {})
    assert caught.value.field == "mode"
    assert caught.value.code == "mode_not_supported"


# --- agreement with the runs code ---------------------------------------------------------


async def upload_image(service: Service, key: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    headers = {"X-API-Key": key}
    init = await service.client.post(
        "/api/media/upload/init",
        headers=headers,
        json={
            "filename": "red.png",
            "content_type": "image/png",
            "media_type": "image",
            "size_bytes": len(data),
        },
    )
    assert init.status_code == 200, init.text
    put = await service.client.put(init.json()["upload_url"], content=data)
    assert put.status_code == 200, put.text
    done = await service.client.post(
        "/api/media/upload/complete", headers=headers, json={"upload_id": init.json()["upload_id"]}
    )
    assert done.status_code == 200, done.text
    return str(done.json()["media_ref"])


@pytest.mark.anyio
@pytest.mark.parametrize("slug", [m.slug for m in REGISTRY.models])
async def test_every_example_request_succeeds_through_the_runs_api(
    service: Service, api_key: str, slug: str
) -> None:
    spec = REGISTRY.get(slug)
    media_ref: str | None = None
    for mode in ("execute", "index", "search", "delete"):
        body = json.dumps(example_request(spec, mode))
        if EXAMPLE_MEDIA_REF in body:
            media_ref = media_ref or await upload_image(service, api_key)
            body = body.replace(EXAMPLE_MEDIA_REF, media_ref)
        r = await service.run(api_key, json.loads(body))
        if r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable":
            pytest.skip(f"{slug}: weights are not on this machine")
        assert r.status_code == 200, (mode, r.text)
        if mode == "search":
            assert r.json()["output"]["hits"], "the search example finds the indexed example"
        if mode == "delete":
            assert r.json()["output"]["deleted"] >= 1


@pytest.mark.anyio
async def test_the_runs_api_refuses_every_contract_violation(
    service: Service, api_key: str
) -> None:
    for mode, input, params, _field, _words in VIOLATIONS:
        body: dict[str, Any] = {"model": MINILM.slug, "mode": mode, "input": input}
        body["params"] = params
        if mode != "execute":
            body["scope"] = "playground"
        r = await service.run(api_key, body)
        assert r.status_code == 422, (body, r.text)
