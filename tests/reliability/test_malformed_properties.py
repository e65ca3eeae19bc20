"""Property tests of the malformed-input class (issue 14, item 2), beside the schemathesis
suite, which generates only what the OpenAPI schemas describe and so missed all of it:
numbers no store holds (huge integers, 1e400, NaN and infinities as raw JSON tokens), deep
nesting, garbage cursors and dates past the calendar, in every place a client can put them.

Whatever is sent: no 5xx, every refusal is the one error envelope, and the scope seeded at
the start is still there, whole, at the end.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from embedders.base import Embedder
from tests.harness import make_settings
from vectorsvc.app import create_app
from vectorsvc.auth.keys import create_api_key
from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace

MODEL = "all-minilm-l6-v2"
SEEDED = 5

PROPERTY = hypothesis_settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Target:
    client: TestClient
    headers: dict[str, str]

    def post(self, path: str, text: str) -> Any:
        headers = {**self.headers, "Content-Type": "application/json"}
        return self.client.post(path, content=text.encode(), headers=headers)

    def get(self, path: str, params: dict[str, str]) -> Any:
        return self.client.get(path, params=params, headers=self.headers)


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    module_database_url: str | None,
) -> Iterator[Target]:
    settings = make_settings(
        tmp_path_factory.mktemp("malformed") / "data",
        models_dir,
        database_url=module_database_url,
        rate_limit_per_minute=10_000_000,
        rate_limit_burst=1_000_000,
    )
    db = Database(settings.resolved_database_url)
    with TestClient(create_app(settings, embedder_loader=embedder_loader)) as client:
        client_target = Target(client, {})
        with db.session() as session:
            key = create_api_key(session, workspace=create_workspace(session, name="props"))
        client_target.headers = {"X-API-Key": key.plaintext}
        items = [
            {"id": f"doc-{i}", "text": f"note {i}", "metadata": {"y": i, "tag": "t"}}
            for i in range(SEEDED)
        ]
        body = {"model": MODEL, "mode": "index", "scope": "kb", "input": {"items": items}}
        assert client_target.post("/api/runs", json.dumps(body)).status_code == 200
        try:
            yield client_target
            # Nothing sent removed or broke the seeded scope.
            page = client_target.get(f"/api/knowledge-bases/{MODEL}/kb/items", {"limit": "50"})
            assert page.status_code == 200, page.text
            assert sorted(i["id"] for i in page.json()["data"]) == [
                f"doc-{i}" for i in range(SEEDED)
            ]
        finally:
            db.close()


def assert_handled(response: Any) -> None:
    timed_out = response.status_code == 504 and response.json()["error"]["code"] == "run_timeout"
    # A 504 is the documented answer to a run past options.timeout_s (some are tiny).
    assert response.status_code < 500 or timed_out, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


# --- JSON text with what Python's json would let through --------------------------------------

HOSTILE_NUMBERS = st.one_of(
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "1e-400",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1" + "0" * 400,
            "-" + "9" * 4300,  # past Python's default int-from-string digit limit
        ]
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
SCALARS = st.one_of(
    HOSTILE_NUMBERS,
    st.sampled_from(["true", "false", "null", '""', '"x"', '"\\ud800"', '"\\ud83d\\ude00"']),
    st.text(max_size=10).map(json.dumps),
)


def nested_text(depth: int, leaf: str, kind: str) -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"n":' * depth + leaf + "}" * depth


DEEP = st.builds(
    nested_text,
    st.one_of(st.integers(1, 40), st.integers(100, 300), st.just(5000)),
    SCALARS,
    st.sampled_from(["array", "object"]),
)
JSON_VALUES = st.recursive(
    st.one_of(SCALARS, DEEP),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["a", "y", "gte", "any", "n"]), children, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=8,
)
FILTER_VALUES = st.one_of(
    JSON_VALUES,
    st.builds(
        lambda op, n: f'{{"{op}":{n}}}',
        st.sampled_from(["gt", "gte", "lt", "lte"]),
        HOSTILE_NUMBERS,
    ),
    st.lists(HOSTILE_NUMBERS, min_size=1, max_size=3).map(
        lambda xs: '{"any":[' + ",".join(xs) + "]}"
    ),
)


def with_raw(body: dict[str, Any], raw: str) -> str:
    return json.dumps(body).replace('"<raw>"', raw)


@given(metadata=JSON_VALUES, key=st.sampled_from(["v", "y", "tag"]))
@PROPERTY
def test_index_metadata_values(target: Target, metadata: str, key: str) -> None:
    item = {"id": "probe", "text": "probe", "metadata": {key: "<raw>"}}
    body = {"model": MODEL, "mode": "index", "scope": "probe", "input": {"items": [item]}}
    assert_handled(target.post("/api/runs", with_raw(body, metadata)))


@given(
    value=FILTER_VALUES, slot=st.sampled_from(["filter", "top_k", "score_threshold", "retrieval"])
)
@PROPERTY
def test_search_params(target: Target, value: str, slot: str) -> None:
    params: dict[str, Any] = {"filter": {"y": "<raw>"}} if slot == "filter" else {slot: "<raw>"}
    body = {"model": MODEL, "mode": "search", "scope": "kb", "input": {"text": "note"}}
    assert_handled(target.post("/api/runs", with_raw({**body, "params": params}, value)))


@given(value=FILTER_VALUES, where=st.sampled_from(["run", "knowledge_base"]))
@PROPERTY
def test_delete_filters_never_touch_the_seeded_items(
    target: Target, value: str, where: str
) -> None:
    # Every filter is on a key the seeded items do not have ("probe"): nothing may match.
    if where == "run":
        body = {
            "model": MODEL,
            "mode": "delete",
            "scope": "kb",
            "input": {"filter": {"probe": "<raw>"}},
        }
        response = target.post("/api/runs", with_raw(body, value))
    else:
        raw = with_raw({"filter": {"probe": "<raw>"}, "dry_run": False}, value)
        response = target.post(f"/api/knowledge-bases/{MODEL}/kb/delete", raw)
    assert_handled(response)
    if response.status_code == 200:
        deleted = response.json().get("deleted", response.json().get("output", {}).get("deleted"))
        assert deleted == 0, response.text


@given(
    value=st.one_of(JSON_VALUES, HOSTILE_NUMBERS),
    path=st.sampled_from(
        [
            (
                "/api/runs",
                {
                    "model": MODEL,
                    "mode": "execute",
                    "input": {"text": "x"},
                    "options": {"timeout_s": "<raw>"},
                },
            ),
            ("/api/runs", {"model": MODEL, "mode": "execute", "input": "<raw>"}),
            (
                "/api/media/upload/init",
                {
                    "filename": "a.png",
                    "content_type": "image/png",
                    "media_type": "image",
                    "size_bytes": "<raw>",
                },
            ),
            ("/api/auth/sign-in", {"email": "a@example.com", "password": "<raw>"}),
            ("/api/auth/refresh", {"refresh_token": "<raw>"}),
        ]
    ),
)
@PROPERTY
def test_other_bodies(target: Target, value: str, path: tuple[str, dict[str, Any]]) -> None:
    assert_handled(target.post(path[0], with_raw(path[1], value)))


# --- cursors and dates -----------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


CURSORS = st.one_of(
    st.text(max_size=60),
    st.text(max_size=40).map(lambda t: b64(json.dumps(t))),  # a JSON string, not a point id
    st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    JSON_VALUES.map(b64),
)


@given(
    cursor=CURSORS,
    path=st.sampled_from(
        [
            f"/api/knowledge-bases/{MODEL}/kb/items",
            "/api/knowledge-bases",
            "/api/marketplace/models",
        ]
    ),
)
@PROPERTY
def test_garbage_cursors(target: Target, cursor: str, path: str) -> None:
    response = target.get(path, {"cursor": cursor})
    assert_handled(response)
    if response.status_code >= 400:
        assert response.json()["error"]["field"] == "cursor", response.text


OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
DATES = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.one_of(st.none(), OFFSETS)).map(datetime.isoformat),
    st.sampled_from(
        ["0001-01-01", "9999-12-31", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]
    ),
    st.text(max_size=64),
)


@given(start=st.one_of(st.none(), DATES), end=st.one_of(st.none(), DATES))
@PROPERTY
def test_usage_summary_dates(target: Target, start: str | None, end: str | None) -> None:
    params = {name: value for name, value in (("from", start), ("to", end)) if value is not None}
    response = target.get("/api/billing/usage/summary", params)
    assert_handled(response)
    if response.status_code >= 400:
        assert response.json()["error"]["field"] in ("from", "to"), response.text


@given(
    item=st.one_of(
        JSON_VALUES, JSON_VALUES.map(lambda m: f'{{"id":"h","text":"x","metadata":{m}}}')
    )
)
@hypothesis_settings(PROPERTY, max_examples=15)
def test_background_runs_report_hostile_items(target: Target, item: str) -> None:
    """A background run takes its items unchecked and checks each as it goes: a hostile one
    fails alone, and the run's status stays readable."""
    good = {"id": "fine", "text": "fine", "metadata": {"n": 1}}
    body = {
        "model": MODEL,
        "mode": "index",
        "scope": "background",
        "input": {"items": ["<raw>", good]},
        "options": {"background": True},
    }
    response = target.post("/api/runs", with_raw(body, item))
    assert_handled(response)
    if response.status_code != 202:
        return
    run_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        status = target.get(f"/api/runs/{run_id}", {})
        assert status.status_code == 200, status.text
        if status.json()["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, status.text
        time.sleep(0.02)
    run = status.json()
    assert run["status"] == "succeeded", run
    assert run["progress"]["done"] + run["progress"]["skipped"] + run["progress"]["failed"] == 2
    listing = target.get("/api/runs", {"limit": "5"})
    assert listing.status_code == 200, listing.text
