"""Structured logs with a request id, and Prometheus metrics with bounded label sets.

Labels use route templates (never raw paths), run modes and model slugs from the registry
(closed sets), so no client input can grow a metric's cardinality.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import secrets
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
RUN_MODES = frozenset({"execute", "index", "search", "delete"})

access_logger = logging.getLogger("vectorsvc.access")


class Metrics:
    """Per-app metrics (its own registry, so several apps in one process never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "vectorsvc_http_request_duration_seconds",
            "HTTP request latency by route template, method, run mode and status class.",
            ["route", "method", "mode", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.embed_batch_size = Histogram(
            "vectorsvc_embedding_batch_size",
            "Inputs per model call (dynamic batching coalesces concurrent requests).",
            ["model", "kind"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.embed_seconds = Histogram(
            "vectorsvc_embedding_call_duration_seconds",
            "Model call latency.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.live_release = Gauge(
            "vectorsvc_model_live_release",
            "1 for the release each model's alias points at.",
            ["model", "release"],
            registry=self.registry,
        )
        self.migration_done = Gauge(
            "vectorsvc_release_migration_done",
            "Points re-embedded so far into the release a migration is filling.",
            ["model", "to_release"],
            registry=self.registry,
        )
        self.migration_total = Gauge(
            "vectorsvc_release_migration_total",
            "Points the running migration of a model has to re-embed.",
            ["model", "to_release"],
            registry=self.registry,
        )
        self.runs = Counter(
            "vectorsvc_runs_total",
            "Runs by model, mode and outcome.",
            ["model", "mode", "outcome"],
            registry=self.registry,
        )

        self.store_warm_seconds = Histogram(
            "vectorsvc_store_warm_duration_seconds",
            "Passes that read the embedded store's files into the page cache (start-up, then "
            "every VECTORSVC_WARM_STORE_INTERVAL_S).",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.store_warm_bytes = Counter(
            "vectorsvc_store_warm_bytes",
            "Bytes those passes read.",
            registry=self.registry,
        )

    def observe_store_warm(self, read: int, seconds: float) -> None:
        self.store_warm_seconds.observe(seconds)
        self.store_warm_bytes.inc(read)

    def observe_batch(self, model: str, kind: str, size: int, seconds: float) -> None:
        self.embed_batch_size.labels(model, kind).observe(size)
        self.embed_seconds.labels(model, kind).observe(seconds)

    def observe_releases(
        self, releases: list[tuple[str, str, tuple[str, int, int] | None]]
    ) -> None:
        """Each model's live release and running migration: (model, live release,
        (to_release, done, total) or None). Read from the database at each scrape."""
        for gauge in (self.live_release, self.migration_done, self.migration_total):
            gauge.clear()
        for model, live, migration in releases:
            self.live_release.labels(model, live).set(1)
            if migration is not None:
                to_release, done, total = migration
                self.migration_done.labels(model, to_release).set(done)
                self.migration_total.labels(model, to_release).set(total)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _route_template(scope: Scope) -> str:
    # FastAPI records the matched route in the scope; a request refused before routing (the
    # body-size limit) is matched here against the app's routes.
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


class ObservabilityMiddleware:
    """Request id (X-Request-ID in and out), an access log line, latency metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _CLIENT_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            mode = scope.get("state", {}).get("run_mode", "-")
            mode = mode if mode in RUN_MODES else "-"
            method = scope.get("method", "-")
            self.metrics.request_seconds.labels(route, method, mode, f"{status // 100}xx").observe(
                elapsed
            )
            access_logger.info(
                "request",
                extra={
                    "http": {
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "mode": mode,
                    }
                },
            )
            request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        http = getattr(record, "http", None)
        if http is not None:
            entry["http"] = http
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    # One JSON object per line: keep Hugging Face's progress bars (model loading) out of it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would repeat ours without the request id.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
