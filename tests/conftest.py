"""Shared fixtures: real models (loaded once per session), real Edge on temp dirs, the app
through httpx with its lifespan running."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedders.base import Embedder  # noqa: E402
from vectorsvc.app import create_app  # noqa: E402
from vectorsvc.auth.keys import create_api_key  # noqa: E402
from vectorsvc.config import Settings  # noqa: E402
from vectorsvc.db.database import Database  # noqa: E402
from vectorsvc.embedding import default_loader  # noqa: E402
from vectorsvc.model_registry.registry import ModelSpec  # noqa: E402
from vectorsvc.workspaces.service import create_workspace  # noqa: E402

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
SCIFACT_DIR = SHARED_DIR / "datasets" / "scifact"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def embedder_cache() -> dict[str, Embedder]:
    return {}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photos that scikit-image ships in its wheel (no download)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is a test dependency")
    return {name: Image.fromarray(getattr(data, name)()) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def random_clip_folder(models_dir: Path) -> Iterator[Path]:
    """A randomly initialised CLIP ViT-B/32 from its real configuration (~600 MB, built once)
    in the session's models dir, where the service looks for `clip-vit-b-32`. Tests that use
    it test plumbing, not relevance."""
    from embedders.clip import build_random_clip_folder

    folder = build_random_clip_folder(models_dir / "clip-vit-b-32")
    yield folder
    # pytest keeps the last few temp dirs; 600 MB is worth giving back at once.
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def embedder_loader(
    embedder_cache: dict[str, Embedder], models_dir: Path
) -> Callable[[ModelSpec], Embedder]:
    """The service's real loader, with each model loaded once for the whole test session."""
    real = default_loader(str(models_dir), 64)

    def load(spec: ModelSpec) -> Embedder:
        if spec.slug not in embedder_cache:
            embedder_cache[spec.slug] = real(spec)
        return embedder_cache[spec.slug]

    return load


def make_settings(data_dir: Path, models_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "models_dir": models_dir,
        "create_dev_workspace": False,
        "preload_models": "",
        # Wallets open with plenty, so tests that are not about billing never hit 402.
        "default_workspace_credits": 1_000_000,
    }
    values.update(overrides)
    return Settings(**values)


class Service:
    """A running app (lifespan entered) with an httpx client and helpers to make callers."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, app: FastAPI) -> None:
        self.client = client
        self.settings = settings
        self.app = app
        self.db = Database(settings.resolved_database_url)

    def new_key(self, workspace: str) -> str:
        """Create workspace `workspace` if needed and return a fresh API key for it."""
        from vectorsvc.workspaces.service import find_workspace

        with self.db.session() as session:
            ws = find_workspace(session, name=workspace) or create_workspace(
                session, name=workspace
            )
            return create_api_key(session, workspace=ws).plaintext

    async def run(self, key: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post("/api/runs", json=body, headers={"X-API-Key": key})


@asynccontextmanager
async def running_service(
    settings: Settings, loader: Callable[[ModelSpec], Embedder]
) -> AsyncIterator[Service]:
    app = create_app(settings, embedder_loader=loader)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            service = Service(client, settings, app)
            try:
                yield service
            finally:
                service.db.close()


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return make_settings(tmp_path / "data", models_dir)


@pytest.fixture
async def service(
    settings: Settings, embedder_loader: Callable[[ModelSpec], Embedder]
) -> AsyncIterator[Service]:
    async with running_service(settings, embedder_loader) as svc:
        yield svc


@pytest.fixture
def api_key(service: Service) -> str:
    return service.new_key("acme")


@pytest.fixture
def scifact_dir() -> Iterator[Path]:
    if not (SCIFACT_DIR / "corpus.jsonl.gz").exists():
        pytest.skip(
            f"SciFact not found at {SCIFACT_DIR} (it lives in ../shared, absent in a user's clone)"
        )
    yield SCIFACT_DIR
