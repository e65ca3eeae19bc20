"""Billing fixtures: a migrated database of its own and a workspace in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec
from vectorsvc.workspaces.service import create_workspace


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def workspace_id(db: Database) -> str:
    with db.session() as session:
        return create_workspace(session, name="acme").id


@pytest.fixture(scope="session")
def minilm() -> ModelSpec:
    return ModelRegistry.from_file().get("all-minilm-l6-v2")
