"""Observability: a request id on every response and every log line of a request, and
Prometheus metrics (latency per route template and run mode, embedding batch sizes and runs
per model) whose label sets stay bounded whatever clients send.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, encode
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.observability import JsonFormatter

pytestmark = pytest.mark.anyio

TEXT = "all-minilm-l6-v2"
IMAGE = "image-similarity"
METRICS_TOKEN = "metrics-" + "t" * 24
GENERATED_ID = re.compile(r"^[0-9a-f]{16}$")
Loader = Callable[[ModelSpec], Embedder]


@dataclass
class Observed:
    service: Service
    app: FastAPI
    key: str

    def client(self, host: str = "127.0.0.1", *, raise_errors: bool = True) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=self.app, client=(host, 40000), raise_app_exceptions=raise_errors
        )
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    async def run(self, **body: Any) -> httpx.Response:
        return await self.service.run(self.key, body)

    async def metrics(self) -> list[Any]:
        r = await self.service.client.get("/metrics")
        assert r.status_code == 200, r.text
        return list(text_string_to_metric_families(r.text))


@asynccontextmanager
async def observed_service(
    tmp_path: Path, models_dir: Path, loader: Loader, **overrides: Any
) -> AsyncIterator[Observed]:
    settings = make_settings(
        tmp_path / "data",
        models_dir,
        rate_limit_per_minute=1_000_000,
        rate_limit_burst=100_000,
        max_body_bytes=4096,
        **overrides,
    )
    async with running_service(settings, loader) as service:
        yield Observed(service=service, app=service.app, key=service.new_key("acme"))


@pytest.fixture
async def observed(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> AsyncIterator[Observed]:
    async with observed_service(
        tmp_path, models_dir, embedder_loader, metrics_token=METRICS_TOKEN
    ) as svc:
        yield svc


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The service's log records as the service formats them (JSON lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("vectorsvc")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def broken_wallet(*_: Any, **__: Any) -> Any:
    raise RuntimeError("wallet store exploded")


async def some_responses(observed: Observed, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """One response of every kind: 200, 401, 404 (no route), 413, 422, 429-free, 500."""
    client = observed.service.client
    responses = [
        ("/health", await client.get("/health")),
        ("/api/billing/wallet", await client.get("/api/billing/wallet", headers=observed.headers)),
        ("/api/billing/wallet", await client.get("/api/billing/wallet")),
        ("unmatched", await client.get("/no/such/route")),
        # Refused by the body-size limit before routing: the template is found by matching.
        (
            "/api/runs",
            await client.post("/api/runs", content=b" " * 5000, headers=observed.headers),
        ),
        ("/api/runs", await observed.run(model=TEXT, mode="search", scope="bad scope!")),
    ]
    monkeypatch.setattr("vectorsvc.billing.service.get_wallet", broken_wallet)
    async with observed.client(raise_errors=False) as failing:
        r = await failing.get("/api/billing/wallet", headers=observed.headers)
        responses.append(("/api/billing/wallet", r))
    monkeypatch.undo()
    statuses = [r.status_code for _, r in responses]
    assert statuses == [200, 200, 401, 404, 413, 422, 500]
    return responses


async def test_every_response_carries_a_request_id(
    observed: Observed, monkeypatch: pytest.MonkeyPatch
) -> None:
    responses = await some_responses(observed, monkeypatch)
    ids = [r.headers.get("x-request-id") for _, r in responses]
    assert all(i is not None and GENERATED_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # A client's own valid id is echoed; an unusable one is replaced.
    client = observed.service.client
    r = await client.get("/health", headers={"X-Request-ID": "trace-abc.12345_X"})
    assert r.headers["x-request-id"] == "trace-abc.12345_X"
    for bad in ("short", "has spaces in it", "x" * 65, "évènement-123"):
        r = await client.get("/health", headers={b"X-Request-ID": bad.encode()})
        assert GENERATED_ID.match(r.headers["x-request-id"]), bad


async def test_log_lines_are_json_with_the_request_id(
    observed: Observed, monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    responses = await some_responses(observed, monkeypatch)
    entries = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = {e["request_id"]: e for e in entries if e["logger"] == "vectorsvc.access"}
    for route, response in responses:
        entry = access[response.headers["x-request-id"]]
        assert entry["http"]["route"] == route
        assert entry["http"]["status"] == response.status_code
        assert entry["level"] == "info" and entry["message"] == "request"
    # The 500's traceback is logged under the same request id as its response.
    failed = responses[-1][1].headers["x-request-id"]
    (error,) = [e for e in entries if e["level"] == "error"]
    assert error["request_id"] == failed
    assert "wallet store exploded" in error["exception"]


async def test_metrics_are_for_loopback_or_the_metrics_token(
    observed: Observed, tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    r = await observed.service.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    async with observed.client("203.0.113.7") as remote:
        r = await remote.get("/metrics")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "metrics_forbidden")
        r = await remote.get("/metrics", headers={"X-Metrics-Token": "metrics-wrong"})
        assert r.status_code == 401
        r = await remote.get("/metrics", headers={"X-Metrics-Token": METRICS_TOKEN})
        assert r.status_code == 200
        assert "vectorsvc_http_request_duration_seconds" in r.text
    # Without VECTORSVC_METRICS_TOKEN set, no token opens it to a remote client.
    async with observed_service(tmp_path / "other", models_dir, embedder_loader) as plain:
        async with plain.client("203.0.113.7") as remote:
            r = await remote.get("/metrics", headers={"X-Metrics-Token": METRICS_TOKEN})
            assert r.status_code == 401


def samples(families: list[Any], name: str) -> list[Any]:
    return [s for f in families for s in f.samples if s.name == name]


def value(families: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples(families, name) if labels.items() <= s.labels.items()]
    return float(sum(found))


async def test_metrics_per_route_mode_and_model(
    observed: Observed, photos: dict[str, Image.Image]
) -> None:
    items = [{"id": f"d{i}", "text": f"note {i} about rivers"} for i in range(3)]
    for body in (
        {"mode": "index", "scope": "s", "input": {"items": items}},
        {"mode": "index", "scope": "s", "input": {"items": [{"id": "e", "text": "lakes"}] * 1}},
        {"mode": "search", "scope": "s", "input": {"text": "rivers"}},
        {"mode": "execute", "input": {"texts": ["one", "two"]}},
        {"mode": "delete", "scope": "s", "input": {"ids": ["d0"]}},
    ):
        r = await observed.run(model=TEXT, **body)
        assert r.status_code == 200, r.text
    photo = encode(photos["coffee"].convert("RGB").resize((96, 64)), "PNG")
    ref = (await Uploader(observed.service, observed.key).upload(photo, "image/png"))["media_ref"]
    r = await observed.run(model=IMAGE, input={"image": {"media_ref": ref}})
    assert r.status_code == 200, r.text
    r = await observed.run(model=TEXT, mode="index", scope="bad scope!", input={})
    assert r.status_code == 422
    assert (await observed.run(model="no-such-model", input={"text": "x"})).status_code == 404
    r = await observed.service.client.get(
        f"/api/knowledge-bases/{TEXT}/s/items/d1", headers=observed.headers
    )
    assert r.status_code == 200

    families = await observed.metrics()
    latency = "vectorsvc_http_request_duration_seconds_count"
    for mode in ("index", "search", "execute", "delete"):
        assert value(families, latency, route="/api/runs", mode=mode, status="2xx") >= 1, mode
    assert value(families, latency, route="/api/runs", mode="index", status="2xx") == 2
    item_route = "/api/knowledge-bases/{model}/{scope}/items/{item_id}"
    assert value(families, latency, route=item_route, method="GET") == 1
    assert value(families, latency, route="/api/media/upload/init", mode="-") == 1
    # Batch sizes per model: 3 + 1 indexed texts and 2 executed (documents), 1 query, 1 image.
    batch = "vectorsvc_embedding_batch_size"
    assert value(families, f"{batch}_sum", model=TEXT, kind="document") == 6
    assert value(families, f"{batch}_count", model=TEXT, kind="query") == 1
    assert value(families, f"{batch}_sum", model=IMAGE) == 1
    # Runs per model, mode and outcome.
    runs = "vectorsvc_runs_total"
    assert value(families, runs, model=TEXT, mode="index", outcome="succeeded") == 2
    for mode in ("search", "execute", "delete"):
        assert value(families, runs, model=TEXT, mode=mode, outcome="succeeded") == 1
    assert value(families, runs, model=IMAGE, mode="execute", outcome="succeeded") == 1
    assert value(families, runs, model=TEXT, mode="index", outcome="rejected") == 1
    assert value(families, runs, model="unknown", mode="execute", outcome="rejected") == 1


def label_values(families: list[Any]) -> dict[tuple[str, str], set[str]]:
    values: dict[tuple[str, str], set[str]] = {}
    for family in families:
        if not family.name.startswith("vectorsvc_"):
            continue
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                if label != "le":
                    values.setdefault((family.name, label), set()).add(label_value)
    return values


async def test_label_sets_stay_bounded(observed: Observed) -> None:
    client = observed.service.client

    async def hostile_round(token: str) -> None:
        for path in (
            f"/{token}",
            f"/api/{token}/{token}",
            f"/api/media/{token}",
            f"/api/runs/{token}",
            f"/api/knowledge-bases/{token}/{token}/items",
        ):
            r = await client.get(path, headers={**observed.headers, "X-Request-ID": f"id-{token}"})
            assert r.status_code in (404, 422), (path, r.text)
        for body in (
            {"model": f"model-{token}", "input": {"text": "x"}},
            {"model": TEXT, "mode": f"mode-{token}", "input": {"text": "x"}},
            {"model": f"m-{token}", "mode": f"mode-{token}", "scope": token, "input": {}},
        ):
            r = await client.post("/api/runs", json=body, headers=observed.headers)
            assert r.status_code in (404, 422), r.text

    await hostile_round("warmup" + secrets.token_hex(4))
    await observed.metrics()  # the /metrics route itself is a label value too
    before = label_values(await observed.metrics())
    tokens = [secrets.token_hex(6) for _ in range(200)]
    for token in tokens:
        await hostile_round(token)
    text = (await client.get("/metrics")).text
    families = list(text_string_to_metric_families(text))
    assert label_values(families) == before
    assert not any(token in text for token in tokens)
    # The hostile requests were counted, under closed label values.
    assert value(families, "vectorsvc_runs_total", model="unknown") == 2 * 201
    latency = "vectorsvc_http_request_duration_seconds_count"
    assert value(families, latency, route="unmatched") >= 2 * 201
