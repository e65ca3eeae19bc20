"""While the service serves, what start-up made is out of the garbage collector's reach
(`gc.freeze()`): a full collection does not walk the models and the app again and again.
Shutting down gives it back."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import pytest

from embedders.base import Embedder
from tests.harness import make_settings, running_service
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio


async def test_start_up_objects_are_frozen_while_serving(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    gc.unfreeze()
    settings = make_settings(tmp_path / "data", models_dir)
    async with running_service(settings, embedder_loader) as service:
        assert gc.get_freeze_count() > 50_000
        r = await service.client.get("/health")
        assert r.status_code == 200
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle made while serving is still collected
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
