"""The test harness: settings for a test service, the running app with an httpx client,
and where the shared datasets live. Fixtures in conftest.py build on it; tests import it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from embedders.base import Embedder
from vectorsvc.app import create_app
from vectorsvc.auth.keys import create_api_key
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
SCIFACT_DIR = SHARED_DIR / "datasets" / "scifact"


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

    def stored_bytes(self) -> bytes:
        """Every byte the metadata database holds: SQLite's files, or a PostgreSQL dump."""
        url = self.settings.resolved_database_url
        if not url.startswith("sqlite:///"):
            from tests.pgcluster import dump_database

            return dump_database(url)
        path = Path(url.removeprefix("sqlite:///"))
        wal = path.with_name(path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


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
