"""Every rule of the gateway contract for POST /api/runs is a behaviour with a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Service

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "mode": "search",
        "scope": "playground",
        "input": {"text": "hello"},
        "params": {},
    }
    base.update(overrides)
    return base


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    return str(error["message"])


async def test_unknown_model_is_404(service: Service, api_key: str) -> None:
    r = await service.run(api_key, body(model="no-such-model"))
    message = assert_error(r, 404, "model_not_found", "model")
    assert "no-such-model" in message


async def test_mode_the_model_does_not_offer_lists_its_modes(
    service: Service, api_key: str
) -> None:
    r = await service.run(api_key, body(mode="transcribe"))
    message = assert_error(r, 422, "mode_not_supported", "mode")
    for mode in ("execute", "index", "search", "delete"):
        assert mode in message
    assert r.json()["error"]["details"]["allowed"] == ["execute", "index", "search", "delete"]


async def test_parameters_is_refused_with_a_pointer_to_params(
    service: Service, api_key: str
) -> None:
    r = await service.run(api_key, body(parameters={"top_k": 3}))
    message = assert_error(r, 422, "use_params", "parameters")
    assert "params" in message


@pytest.mark.parametrize("value", [[1, 2], "top_k=3", 5, True])
async def test_params_must_be_an_object(service: Service, api_key: str, value: Any) -> None:
    r = await service.run(api_key, body(params=value))
    assert_error(r, 422, "invalid_params", "params")


@pytest.mark.parametrize("name", ["resources", "alias", "collection", "namespace"])
@pytest.mark.parametrize("where", ["top", "params", "options"])
async def test_routing_fields_are_forbidden_everywhere(
    service: Service, api_key: str, name: str, where: str
) -> None:
    if where == "top":
        request = body(**{name: "x"})
        field = name
    else:
        request = body(**{where: {name: "x"}})
        field = f"{where}.{name}"
    r = await service.run(api_key, request)
    message = assert_error(r, 422, "routing_field_forbidden", field)
    assert "platform" in message


async def test_hardware_tier_is_refused(service: Service, api_key: str) -> None:
    r = await service.run(api_key, body(options={"hardware_tier": "gpu-large"}))
    message = assert_error(r, 422, "hardware_tier_forbidden", "options.hardware_tier")
    assert "resolved from the published model release" in message


async def test_unknown_option_lists_the_allowed_ones(service: Service, api_key: str) -> None:
    r = await service.run(api_key, body(options={"priority": "high"}))
    message = assert_error(r, 422, "option_not_allowed", "options.priority")
    assert "timeout_s" in message
    assert "timeout_s" in r.json()["error"]["details"]["allowed"]


async def test_unknown_top_level_field(service: Service, api_key: str) -> None:
    r = await service.run(api_key, body(tenant="other"))
    message = assert_error(r, 422, "unknown_field", "tenant")
    assert "params" in message


@pytest.mark.parametrize("mode", ["index", "search", "delete"])
async def test_scope_is_required_for_vector_modes(
    service: Service, api_key: str, mode: str
) -> None:
    request = body(mode=mode)
    del request["scope"]
    r = await service.run(api_key, request)
    assert_error(r, 422, "scope_required", "scope")


@pytest.mark.parametrize(
    "scope", ["", "-leading-dash", ".dot", "has space", "a/b", "x" * 65, "ünï", 42]
)
async def test_invalid_scope_states_the_rule(service: Service, api_key: str, scope: Any) -> None:
    r = await service.run(api_key, body(scope=scope))
    message = assert_error(r, 422, "invalid_scope", "scope")
    assert "64 characters" in message
    assert "letter or digit" in message


@pytest.mark.parametrize("scope", ["a", "A1", "test", "my.data_set-2", "9" + "x" * 63])
async def test_valid_scopes_are_accepted(service: Service, api_key: str, scope: str) -> None:
    r = await service.run(api_key, body(scope=scope))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == scope


async def test_mode_defaults_to_execute_and_needs_no_scope(service: Service, api_key: str) -> None:
    r = await service.run(api_key, {"model": MODEL, "input": {"text": "Hello"}})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["mode"] == "execute"
    assert data["status"] == "succeeded"
    assert data["id"].startswith("run_")
    assert len(data["output"]["embeddings"]) == 1
    assert len(data["output"]["embeddings"][0]) == 384


async def test_model_and_input_are_required(service: Service, api_key: str) -> None:
    r = await service.run(api_key, {"input": {"text": "x"}})
    assert_error(r, 422, "model_required", "model")
    r = await service.run(api_key, {"model": MODEL})
    assert_error(r, 422, "input_required", "input")
    r = await service.run(api_key, {"model": MODEL, "input": "text"})
    assert_error(r, 422, "invalid_input", "input")


async def test_malformed_json_and_non_object_body(service: Service, api_key: str) -> None:
    r = await service.client.post(
        "/api/runs",
        content=b'{"model": ',
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    assert_error(r, 422, "validation_error", "body")
    r = await service.client.post("/api/runs", json=[1, 2], headers={"X-API-Key": api_key})
    assert_error(r, 422, "validation_error", "body")


async def test_bad_input_field_is_named(service: Service, api_key: str) -> None:
    r = await service.run(
        api_key,
        body(mode="index", input={"items": [{"id": "a", "text": "ok"}, {"id": "b"}]}),
    )
    assert_error(r, 422, "validation_error", "input.items[1].text")
    r = await service.run(api_key, body(params={"top_k": 0}))
    assert_error(r, 422, "validation_error", "params.top_k")
    r = await service.run(api_key, body(params={"top_k": 100_000}))
    assert_error(r, 422, "top_k_too_large", "params.top_k")
    r = await service.run(api_key, body(params={"filter": {"year": {"between": [1, 2]}}}))
    message = assert_error(r, 422, "validation_error", "params.filter.year")
    assert '{"any": [...]}' in message


async def test_404_and_405_use_the_error_envelope(service: Service, api_key: str) -> None:
    r = await service.client.get("/api/nothing-here", headers={"X-API-Key": api_key})
    assert_error(r, 404, "not_found")
    r = await service.client.delete("/api/runs", headers={"X-API-Key": api_key})
    assert_error(r, 405, "method_not_allowed")


async def test_timeout_option_is_validated(service: Service, api_key: str) -> None:
    r = await service.run(api_key, body(options={"timeout_s": -1}))
    assert_error(r, 422, "invalid_option", "options.timeout_s")
    r = await service.run(api_key, body(options={"timeout_s": 30}))
    assert r.status_code == 200, r.text
