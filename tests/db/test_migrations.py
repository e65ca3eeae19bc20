"""Alembic migrations, up and down, on SQLite and PostgreSQL: the schema they build is the
one db/tables.py declares, every downgrade undoes its upgrade, and data migrations carry
the rows they should."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select, text

from vectorsvc.db.database import MIGRATIONS_DIR, Database
from vectorsvc.db.tables import Base


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


def revisions() -> list[str]:
    """Every revision id, oldest first."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def tables(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names()) - {"alembic_version"}


def current(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_head_builds_the_schema_tables_py_declares(db: Database) -> None:
    db.migrate()
    assert tables(db) == set(Base.metadata.tables)
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_every_revision_goes_down_and_up_again(db: Database) -> None:
    ids = revisions()
    assert len(ids) >= 8
    db.migrate()
    # Down one revision at a time to nothing at all, then up one at a time to head.
    for below in [*reversed(ids[:-1]), "base"]:
        db.downgrade(below)
        assert current(db) == (None if below == "base" else below)
    assert tables(db) == set()
    for revision in ids:
        db.migrate(revision)
        assert current(db) == revision
    assert tables(db) == set(Base.metadata.tables)


def utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (the service stores UTC), PostgreSQL aware ones.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_media_blobs_migration_carries_every_stored_blob(db: Database) -> None:
    # 0008 builds media_blobs from the media rows already there, in SQL of its own.
    db.migrate("0007")
    first = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        ("m1", "a" * 64, 10, first),
        ("m2", "a" * 64, 10, first + timedelta(hours=1)),
        ("m3", "b" * 64, 7, first + timedelta(days=1)),
    ]
    # Through the declared tables (unchanged since 0005 and 0002), so each dialect stores
    # times the way the service does.
    workspaces, media, blobs = (
        Base.metadata.tables[name] for name in ("workspaces", "media", "media_blobs")
    )
    with db.engine.begin() as connection:
        connection.execute(insert(workspaces).values(id="w1", name="acme", created_at=first))
        for ref, sha, size, created in rows:
            connection.execute(
                insert(media).values(
                    workspace_id="w1", media_ref=ref, upload_id=ref, sha256=sha,
                    size_bytes=size, content_type="image/png", media_type="image",
                    filename="x.png", created_at=created,
                )
            )  # fmt: skip
    db.migrate()
    with db.engine.connect() as connection:
        found = {
            row.sha256: (row.size_bytes, utc(row.created_at), utc(row.last_used_at))
            for row in connection.execute(select(blobs))
        }
    assert found == {
        "a" * 64: (10, first, first + timedelta(hours=1)),
        "b" * 64: (7, first + timedelta(days=1), first + timedelta(days=1)),
    }
    db.downgrade("0007")
    assert "media_blobs" not in tables(db)
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM media")).scalar_one() == 3
