"""Malformed input is refused with a clear 4xx, and nothing stored can break a scope
(issue 14, item 2): garbage cursors, numbers the store cannot hold, dates past the
calendar, non-standard JSON tokens, metadata nested too deep, and a point already stored
with such metadata (read, searched and deleted again)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi.routing import APIRoute

from tests.harness import Service, make_settings, running_service
from tests.runs.test_background import submit, wait_for
from vectorsvc.json_body import JSONRoute
from vectorsvc.points import catalog
from vectorsvc.points.namespaces import resolve
from vectorsvc.points.payload import point_payload
from vectorsvc.vectorstore.base import PointRecord

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
HUGE = "1" + "0" * 400  # a 401-digit integer, as JSON text


def nested(depth: int) -> dict[str, Any]:
    """`depth` levels of objects: {"n": {"n": ... {"leaf": 1}}}."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def raw_json(body: Any, **raw: str) -> str:
    """`body` as JSON text, each string "<name>" in it replaced by the raw text `raw[name]`
    (a number no Python value writes: 401 digits, NaN, 1e400)."""
    text = json.dumps(body)
    for name, value in raw.items():
        text = text.replace(f'"<{name}>"', value)
    return text


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def seed(service: Service, key: str, scope: str = "kb") -> None:
    r = await service.run(
        key,
        {
            "model": MODEL,
            "mode": "index",
            "scope": scope,
            "input": {"items": [{"id": "a", "text": "hello world", "metadata": {"y": 5}}]},
        },
    )
    assert r.status_code == 200, r.text


async def post_raw(service: Service, key: str, path: str, body: str) -> Any:
    return await service.client.post(
        path, content=body, headers={"X-API-Key": key, "Content-Type": "application/json"}
    )


def assert_error(r: Any, status: int, code: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error


# --- cursors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "Ingi",  # the probe: the JSON string "x", not a point id
        cursor_of("not-a-uuid"),
        cursor_of(["a", "b"]),
        cursor_of(12),
        cursor_of(None),
        "!!!!",
    ],
)
async def test_garbage_item_cursor_is_invalid_cursor(
    service: Service, api_key: str, cursor: str
) -> None:
    await seed(service, api_key)
    r = await service.client.get(
        f"/api/knowledge-bases/{MODEL}/kb/items",
        params={"cursor": cursor},
        headers={"X-API-Key": api_key},
    )
    assert_error(r, 422, "invalid_cursor", "cursor")


@pytest.mark.parametrize("value", [[1, 2], ["a"], ["a", {"b": 1}], "x", 3.5])
async def test_garbage_listing_cursor_is_invalid_cursor(
    service: Service, api_key: str, value: Any
) -> None:
    await seed(service, api_key)
    r = await service.client.get(
        "/api/knowledge-bases", params={"cursor": cursor_of(value)}, headers={"X-API-Key": api_key}
    )
    assert_error(r, 422, "invalid_cursor", "cursor")


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "number", "field"),
    [
        ({"y": {"gte": "<n>"}}, HUGE, "params.filter.y.gte"),  # the probe
        ({"y": {"lt": "<n>"}}, "-" + HUGE, "params.filter.y.lt"),
        ({"y": {"gt": "<n>"}}, "1e400", "params.filter.y.gt"),  # parses as an infinity
        ({"y": "<n>"}, HUGE, "params.filter.y"),
        ({"y": "<n>"}, str(2**63), "params.filter.y"),
        ({"y": {"any": [1, "<n>"]}}, HUGE, "params.filter.y.any[1]"),
    ],
)
async def test_search_filter_numbers_out_of_range_are_422(
    service: Service, api_key: str, flt: Any, number: str, field: str
) -> None:
    await seed(service, api_key)
    search = {"model": MODEL, "mode": "search", "scope": "kb", "input": {"text": "hi"}}
    body = raw_json({**search, "params": {"filter": flt}}, n=number)
    r = await post_raw(service, api_key, "/api/runs", body)
    assert_error(r, 422, "invalid_filter", field)


async def test_delete_filter_numbers_out_of_range_are_422(service: Service, api_key: str) -> None:
    await seed(service, api_key)
    delete = {"model": MODEL, "mode": "delete", "scope": "kb"}
    body = raw_json({**delete, "input": {"filter": {"y": {"lt": "<n>"}}}}, n=HUGE)
    r = await post_raw(service, api_key, "/api/runs", body)
    assert_error(r, 422, "invalid_filter", "input.filter.y.lt")
    r = await post_raw(
        service,
        api_key,
        f"/api/knowledge-bases/{MODEL}/kb/delete",
        raw_json({"filter": {"y": "<n>"}}, n=HUGE),
    )
    assert_error(r, 422, "invalid_filter", "filter.y")
    # Nothing was deleted, and the bounds that fit still filter.
    r = await service.run(
        api_key,
        {
            "model": MODEL,
            "mode": "search",
            "scope": "kb",
            "input": {"text": "hello"},
            "params": {"filter": {"y": {"gte": 5, "lt": 1.7e308}}},
        },
    )
    assert [h["id"] for h in r.json()["output"]["hits"]] == ["a"]


@pytest.mark.parametrize(
    ("metadata", "number"),
    [
        ({"v": "<n>"}, HUGE),
        ({"v": {"w": [1, "<n>"]}}, "-" + HUGE),
        ({"v": "<n>"}, "1e400"),
    ],
)
async def test_metadata_numbers_out_of_range_are_422(
    service: Service, api_key: str, metadata: Any, number: str
) -> None:
    item = {"id": "b", "text": "x", "metadata": metadata}
    index = {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": [item]}}
    r = await post_raw(service, api_key, "/api/runs", raw_json(index, n=number))
    assert_error(r, 422, "invalid_number", "input.items[0].metadata")


# --- dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"to": "9999-12-31"},  # the probe: the day after it does not exist
        {"from": "9999-12-31T23:00:00-05:00"},
        {"to": "0001-01-01T00:00:00+05:00"},
        {"from": "0001-01-01T00:30:00+01:00", "to": "2026-01-01"},
    ],
)
async def test_usage_summary_dates_past_the_calendar_are_422(
    service: Service, api_key: str, params: dict[str, str]
) -> None:
    r = await service.client.get(
        "/api/billing/usage/summary", params=params, headers={"X-API-Key": api_key}
    )
    field = "to" if "to" in params and "from" not in params else "from"
    assert_error(r, 422, "invalid_date", field)
    assert "years 1 to 9999" in r.json()["error"]["message"]


async def test_usage_summary_calendar_edges_and_reversed_periods(
    service: Service, api_key: str
) -> None:
    headers = {"X-API-Key": api_key}
    path = "/api/billing/usage/summary"
    r = await service.client.get(
        path, params={"from": "0001-01-01", "to": "9999-12-30"}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["to"] == "9999-12-31T00:00:00Z"
    r = await service.client.get(path, params={"from": "9999-12-31"}, headers=headers)
    assert r.status_code == 200, r.text
    r = await service.client.get(
        path, params={"from": "2026-02-01", "to": "2026-01-01"}, headers=headers
    )
    assert_error(r, 422, "invalid_period", "to")


# --- non-standard JSON tokens ---------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_non_standard_json_tokens_are_refused_at_parse(
    service: Service, api_key: str, token: str
) -> None:
    await seed(service, api_key)
    item = {"id": "n", "text": "x", "metadata": {"v": "<t>"}}
    index = {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": [item]}}
    search = {"model": MODEL, "mode": "search", "scope": "kb", "input": {"text": "x"}}
    bodies: list[tuple[str, Any]] = [
        ("/api/runs", index),
        ("/api/runs", {**search, "params": {"score_threshold": "<t>"}}),
        # Before: a range bound of -Infinity matched, and deleted, every item.
        (f"/api/knowledge-bases/{MODEL}/kb/delete", {"filter": {"y": {"gt": "<t>"}}}),
        ("/api/media/upload/init", {"filename": "a.png", "size_bytes": "<t>"}),
        ("/api/auth/sign-in", {"email": "a@b.c", "password": "<t>"}),
    ]
    for path, body in bodies:
        r = await post_raw(service, api_key, path, raw_json(body, t=token))
        assert_error(r, 422, "validation_error", "body")
        assert f"{token} is not a JSON number" in r.json()["error"]["message"]
    listing = await service.client.get(
        f"/api/knowledge-bases/{MODEL}/kb/items", headers={"X-API-Key": api_key}
    )
    assert [item["id"] for item in listing.json()["data"]] == ["a"]


@pytest.mark.parametrize(
    "where",
    [
        {"items": [{"id": "s", "text": "x", "metadata": {"v": "<s>"}}]},
        {"items": [{"id": "s", "text": "x", "metadata": {"v": {"<s>": 1}}}]},
        {"items": [{"id": "<s>", "text": "x"}]},
    ],
)
async def test_a_lone_surrogate_escape_is_refused_at_parse(
    service: Service, api_key: str, where: dict[str, Any]
) -> None:
    """`"\\ud800"` parsed into a str no UTF-8 encoder takes: the store raised (500)."""
    for options in ({}, {"background": True}):
        body = {"model": MODEL, "mode": "index", "scope": "kb", "input": where, "options": options}
        r = await post_raw(service, api_key, "/api/runs", raw_json(body, s='"\\ud800"'))
        assert_error(r, 422, "validation_error", "body")
        assert "lone UTF-16 surrogate" in r.json()["error"]["message"]
    delete = {"model": MODEL, "mode": "delete", "scope": "kb", "input": {"ids": ["<s>"]}}
    r = await post_raw(service, api_key, "/api/runs", raw_json(delete, s='"a\\udfff"'))
    assert_error(r, 422, "validation_error", "body")
    # Bytes that are not UTF-8 at all (an encoded surrogate) are refused the same way.
    raw = raw_json(delete, s='"x"').encode().replace(b'"x"', b'"\xed\xa0\x80"')
    r = await service.client.post(
        "/api/runs", content=raw, headers={"X-API-Key": api_key, "Content-Type": "application/json"}
    )
    assert_error(r, 422, "validation_error", "body")
    # An escaped surrogate pair is one character (an emoji, as ensure_ascii JSON sends it).
    item = {"id": "emoji", "text": "smile \U0001f600", "metadata": {"v": "\U0001f600"}}
    body = {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": [item]}}
    r = await post_raw(service, api_key, "/api/runs", json.dumps(body))  # ensure_ascii
    assert r.status_code == 200, r.text
    r = await service.client.get(
        f"/api/knowledge-bases/{MODEL}/kb/items/emoji", headers={"X-API-Key": api_key}
    )
    assert r.json()["metadata"] == {"v": "\U0001f600"}


async def test_a_body_nested_past_the_parser_is_422(service: Service, api_key: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000  # 200 KB, under the body size limit
    item = {"id": "d", "text": "x", "metadata": {"v": "<deep>"}}
    body = {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": [item]}}
    r = await post_raw(service, api_key, "/api/runs", raw_json(body, deep=deep))
    assert_error(r, 422, "validation_error", "body")
    assert "nests arrays and objects too deeply" in r.json()["error"]["message"]


async def test_every_route_with_a_body_parses_standard_json(service: Service) -> None:
    routes = [r for r in service.app.routes if isinstance(r, APIRoute)]
    assert len(routes) > 20
    assert all(isinstance(r, JSONRoute) for r in routes), [
        r.path for r in routes if not isinstance(r, JSONRoute)
    ]


# --- metadata shape -------------------------------------------------------------------------


async def test_metadata_depth_and_keys_are_bounded(service: Service, api_key: str) -> None:
    def index(metadata: Any) -> dict[str, Any]:
        items = [{"id": "d", "text": "deep", "metadata": metadata}]
        return {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": items}}

    r = await service.run(api_key, index({"v": nested(200)}))  # the probe
    assert_error(r, 422, "metadata_too_deep", "input.items[0].metadata")
    assert "at most 8" in r.json()["error"]["message"]
    r = await service.run(api_key, index({"v": [[[[[[[[1]]]]]]]]}))  # arrays are levels too
    assert_error(r, 422, "metadata_too_deep", "input.items[0].metadata")
    many = {f"k{i}": {f"j{j}": j for j in range(20)} for i in range(13)}  # 13 + 260 keys
    r = await service.run(api_key, index(many))
    assert_error(r, 422, "metadata_too_many_keys", "input.items[0].metadata")
    # At the limits: stored and read back as sent.
    r = await service.run(api_key, index(nested(8)))
    assert r.status_code == 200, r.text
    item = await service.client.get(
        f"/api/knowledge-bases/{MODEL}/kb/items/d", headers={"X-API-Key": api_key}
    )
    assert item.json()["metadata"] == nested(8)


async def test_metadata_limits_are_settings(
    tmp_path: Any, models_dir: Any, embedder_loader: Any
) -> None:
    settings = make_settings(
        tmp_path / "data", models_dir, max_metadata_depth=2, max_metadata_keys=3
    )
    async with running_service(settings, embedder_loader) as service:
        key = service.new_key("acme")

        async def index(metadata: Any) -> Any:
            items = [{"id": "d", "text": "deep", "metadata": metadata}]
            body = {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": items}}
            return await service.run(key, body)

        assert (await index({"a": {"b": 1}})).status_code == 200
        assert_error(await index({"a": {"b": [1]}}), 422, "metadata_too_deep")
        assert_error(await index({"a": 1, "b": 2, "c": {"d": 1}}), 422, "metadata_too_many_keys")
        # A background run checks each item against the same settings.
        run = await submit(
            service,
            key,
            [
                {"id": "ok", "text": "flat", "metadata": {"a": 1}},
                {"id": "deep", "text": "deep", "metadata": {"a": {"b": {"c": 1}}}},
            ],
        )
        done = await wait_for(service, key, run["id"], lambda r: r["status"] == "succeeded")
        assert done["progress"]["done"] == 1
        assert [(e["id"], e["code"]) for e in done["errors"]] == [("deep", "invalid_item")]
        assert "at most 2" in done["errors"][0]["message"]


# --- a point already stored with a payload the store cannot read ---------------------------


async def test_a_stored_unreadable_point_is_readable_and_deletable_again(
    service: Service, api_key: str
) -> None:
    """Old data: a point stored, before the contract bounded it, with metadata nested 200
    levels deep. Written straight to the vector store, as the old service did; the
    store reads no payload nested past 128 levels back."""
    await seed(service, api_key)
    state = service.app.state.vectorsvc
    workspace_id = (
        await service.client.get("/api/billing/wallet", headers={"X-API-Key": api_key})
    ).json()["workspace_id"]
    ns = resolve(workspace_id=workspace_id, model=state.registry.get(MODEL), scope="kb")
    vector = np.zeros(state.registry.get(MODEL).dimension, dtype=np.float32)
    vector[0] = 1.0
    records = [
        PointRecord(
            id=ns.point_id(item_id),
            payload=point_payload(
                ns,
                item_id=item_id,
                text="deep text",
                media_ref=None,
                metadata=metadata,
                content_hash="0" * 64,
                run_id="run_old",
                indexed_at=datetime.now(UTC).isoformat(),
            ),
            vector=vector,
        )
        for item_id, metadata in (("deep", {"v": nested(200)}), ("fine", {"v": nested(120)}))
    ]
    # And a point whose fields have types the service never writes.
    odd = dict(records[1].payload, id="odd", metadata=[1, 2], indexed_at=5, media_ref=7)
    records.append(PointRecord(id=ns.point_id("odd"), payload=odd, vector=vector))
    state.store.upsert(ns.collection, records)
    catalog.record_count(state.db, ns=ns, point_count=4)
    headers = {"X-API-Key": api_key}
    base = f"/api/knowledge-bases/{MODEL}/kb"

    def search(**params: Any) -> Any:
        body = {"model": MODEL, "mode": "search", "scope": "kb", "input": {"text": "hello"}}
        return service.run(api_key, {**body, "params": {"top_k": 10, **params}})

    # A filter on metadata makes the engine read every payload of the scope (it panicked).
    r = await search(filter={"y": {"gte": 0}})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["output"]["hits"]] == ["a"]
    r = await search()
    assert r.status_code == 200, r.text
    hits = {h["id"]: h for h in r.json()["output"]["hits"]}
    assert set(hits) == {"a", "deep", "fine", "odd"}
    assert hits["odd"]["metadata"] == {} and "media_ref" not in hits["odd"]
    assert hits["deep"]["metadata"] == {} and hits["deep"]["text"] is None
    assert hits["fine"]["metadata"] == {"v": nested(120)}  # readable payloads are untouched
    assert hits["a"]["metadata"] == {"y": 5}
    r = await service.client.get(f"{base}/items", headers=headers)
    assert r.status_code == 200, r.text
    assert sorted(i["id"] for i in r.json()["data"]) == ["a", "deep", "fine", "odd"]
    r = await service.client.get(f"{base}/items/deep", headers=headers)
    assert r.status_code == 200 and r.json()["id"] == "deep"
    r = await service.client.delete(f"{base}/items/deep", headers=headers)
    assert r.status_code == 200 and r.json()["deleted"] == 1, r.text
    r = await service.client.get(f"{base}/items", headers=headers)
    assert sorted(i["id"] for i in r.json()["data"]) == ["a", "fine", "odd"]
    r = await service.client.delete(base, headers=headers)
    assert r.status_code == 200 and r.json()["deleted"] == 3, r.text


async def test_deleting_a_scope_with_an_unreadable_point_removes_it(
    service: Service, api_key: str
) -> None:
    await seed(service, api_key)
    state = service.app.state.vectorsvc
    workspace_id = (
        await service.client.get("/api/billing/wallet", headers={"X-API-Key": api_key})
    ).json()["workspace_id"]
    ns = resolve(workspace_id=workspace_id, model=state.registry.get(MODEL), scope="kb")
    vector = np.ones(state.registry.get(MODEL).dimension, dtype=np.float32)
    payload = {"_tenant": ns.tenant_key, "_ws": workspace_id, "_scope": "kb", "id": "deep"}
    payload["metadata"] = {"v": nested(300)}
    state.store.upsert(
        ns.collection,
        [
            PointRecord(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, "deep")), payload=payload, vector=vector
            )
        ],
    )
    r = await service.client.delete(
        f"/api/knowledge-bases/{MODEL}/kb", headers={"X-API-Key": api_key}
    )
    assert r.status_code == 200 and r.json()["deleted"] == 2, r.text
    assert state.store.count(ns.collection, filter=ns.tenant_filter) == 0
