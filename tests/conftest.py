"""Shared fixtures: real models (loaded once per session), real Edge on temp dirs, the app
through httpx with its lifespan running."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedders.base import Embedder  # noqa: E402
from tests.harness import SCIFACT_DIR, Service, make_settings, running_service  # noqa: E402
from tests.pgcluster import (  # noqa: E402, F401  (fixtures: the session's PostgreSQL)
    PostgresCluster,
    postgres_cluster,
    postgres_database_url,
    postgres_url,
)
from vectorsvc.config import Settings  # noqa: E402
from vectorsvc.embedding import default_loader  # noqa: E402
from vectorsvc.model_registry.registry import ModelSpec  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Which metadata database the tests run on (see docs/architecture.md, "Tests"): `sqlite` (the
# default), `postgresql` (the whole suite on the session's throwaway PostgreSQL) or `both`.
# The database layer's own tests run on both whatever it says.
TEST_DATABASE_ENV = "VECTORSVC_TEST_DATABASE"
BACKENDS = ("sqlite", "postgresql")
BOTH_DATABASES_MARK = "both_databases"
# The database layer's own tests, by path under tests/ (a test elsewhere can carry the mark).
BOTH_DATABASES_PATHS = (
    "db/test_migrations.py",
    "billing/",
    "accounts/",
    "auth/",
    "media/test_collect.py",
    "runs/test_background.py",
    "runs/test_write_intents.py",
)
TESTS_DIR = Path(__file__).parent


def _chosen_backends() -> tuple[str, ...]:
    choice = os.environ.get(TEST_DATABASE_ENV, "sqlite")
    if choice == "both":
        return BACKENDS
    if choice not in BACKENDS:
        raise pytest.UsageError(f"{TEST_DATABASE_ENV}={choice!r}: use sqlite, postgresql or both")
    return (choice,)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = _chosen_backends()
    where = metafunc.definition.path.relative_to(TESTS_DIR).as_posix()
    if metafunc.definition.get_closest_marker(BOTH_DATABASES_MARK) is not None or any(
        where.startswith(prefix) for prefix in BOTH_DATABASES_PATHS
    ):
        backends = BACKENDS
    if len(backends) > 1 and "database_backend" in metafunc.fixturenames:
        metafunc.parametrize("database_backend", backends)


@pytest.fixture
def database_backend() -> str:
    """`sqlite` or `postgresql`; a parameter instead where the test runs on both."""
    return _chosen_backends()[0]


@pytest.fixture(autouse=True)
def database_url(
    database_backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The test's own metadata database. On PostgreSQL a new empty one, named in
    VECTORSVC_DATABASE_URL so every Settings the test builds (subprocesses included) uses it;
    on SQLite the variable is unset and each data dir keeps its own file."""
    if database_backend == "postgresql":
        url: str = request.getfixturevalue("postgres_database_url")
        monkeypatch.setenv("VECTORSVC_DATABASE_URL", url)
        return url
    monkeypatch.delenv("VECTORSVC_DATABASE_URL", raising=False)
    return f"sqlite:///{tmp_path / 'metadata.db'}"


@pytest.fixture(scope="module")
def module_database_url(request: pytest.FixtureRequest) -> str | None:
    """For module-scoped services: a PostgreSQL database of the module's own when the suite
    runs on PostgreSQL, else None (the data dir's SQLite file)."""
    if _chosen_backends()[0] != "postgresql":
        return None
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    request.addfinalizer(lambda: cluster.drop_database(name))
    return cluster.url(name)


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
        # By slug and embedder: tests publish one slug from different local weights.
        key = f"{spec.slug}\x1f{spec.embedder.model_dump_json()}"
        if key not in embedder_cache:
            embedder_cache[key] = real(spec)
        return embedder_cache[key]

    return load


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
