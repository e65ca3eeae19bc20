"""The service reads the embedded store's files into the page cache at start-up and again
every VECTORSVC_WARM_STORE_INTERVAL_S while it serves; a failed pass is logged and retried,
and searches go on throughout."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from vectorsvc.config import Settings
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

Loader = Callable[[ModelSpec], Embedder]
TEXT = "all-minilm-l6-v2"


async def _warm_metrics(service: Service) -> tuple[int, float]:
    """(passes, bytes read) from /metrics."""
    r = await service.client.get("/metrics")
    assert r.status_code == 200
    passes, read = 0, 0.0
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == "vectorsvc_store_warm_duration_seconds_count":
                passes = int(sample.value)
            elif sample.name == "vectorsvc_store_warm_bytes_total":
                read = sample.value
    return passes, read


async def _index(service: Service, key: str) -> None:
    items = [{"id": f"d{i}", "text": f"note number {i} about penguins"} for i in range(8)]
    r = await service.run(
        key, {"model": TEXT, "mode": "index", "scope": "s", "input": {"items": items}}
    )
    assert r.status_code == 200, r.text


async def _search(service: Service, key: str) -> list[str]:
    r = await service.run(
        key,
        {"model": TEXT, "mode": "search", "scope": "s", "input": {"text": "penguins"}},
    )
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["output"]["hits"]]


async def _wait_for_passes(service: Service, at_least: int) -> tuple[int, float]:
    with anyio.fail_after(20):
        while True:
            passes, read = await _warm_metrics(service)
            if passes >= at_least:
                return passes, read
            await anyio.sleep(0.05)


async def test_the_store_is_warmed_again_while_serving(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, warm_store_interval_s=0.1)
    async with running_service(settings, embedder_loader) as service:
        key = service.new_key("acme")
        passes, read = await _warm_metrics(service)
        assert passes >= 1 and read == 0  # start-up, before any collection existed
        await _index(service, key)
        first = await _search(service, key)
        assert len(first) == 8
        passes, _ = await _warm_metrics(service)  # the model's load took many intervals
        _, read = await _wait_for_passes(service, passes + 3)
        assert read > 0  # the collection's segment files
        assert await _search(service, key) == first


async def test_at_start_up_only_with_an_interval_of_zero(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, warm_store_interval_s=0)
    async with running_service(settings, embedder_loader) as service:
        await anyio.sleep(0.5)
        assert (await _warm_metrics(service))[0] == 1
    settings = make_settings(tmp_path / "data2", models_dir, warm_store=False)
    async with running_service(settings, embedder_loader) as service:
        assert (await _warm_metrics(service))[0] == 0


async def test_a_failed_pass_is_logged_and_the_next_one_runs(
    tmp_path: Path,
    models_dir: Path,
    embedder_loader: Loader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, warm_store_interval_s=0.05)
    async with running_service(settings, embedder_loader) as service:
        store = service.app.state.vectorsvc.store
        real_warm = store.warm
        failures = [OSError("disk went away")]

        def flaky_warm(max_bytes: int | None = None) -> int:
            if failures:
                raise failures.pop()
            return int(real_warm(max_bytes))

        passes, _ = await _warm_metrics(service)
        with caplog.at_level(logging.ERROR, logger="vectorsvc.app"):
            store.warm = flaky_warm
            try:
                await _wait_for_passes(service, passes + 2)
            finally:
                del store.warm
        assert not failures
        assert any("warming the vector store failed" in r.getMessage() for r in caplog.records)


def test_the_read_budget_defaults_to_half_the_memory(tmp_path: Path) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert Settings(data_dir=tmp_path).warm_store_max_bytes == memory // 2
    assert Settings(data_dir=tmp_path, warm_store_max_mb=64).warm_store_max_bytes == 64 << 20
