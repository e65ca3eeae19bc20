"""The database URL an operator writes is the one that works."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from tests.pgcluster import PostgresCluster
from vectorsvc.config import Settings
from vectorsvc.db.database import Database, engine_url
from vectorsvc.db.tables import Workspace
from vectorsvc.workspaces.service import create_workspace


def test_the_plain_postgresql_url_works_as_written(postgres_database_url: str) -> None:
    # VECTORSVC_DATABASE_URL=postgresql://user@host:port/db, exactly as the README has it.
    assert postgres_database_url.startswith("postgresql://")
    settings = Settings(database_url=postgres_database_url)
    db = Database(settings.resolved_database_url)
    try:
        assert (db.engine.dialect.name, db.engine.dialect.driver) == ("postgresql", "psycopg")
        db.migrate()
        with db.session() as session:
            assert session.execute(text("SELECT count(*) FROM workspaces")).scalar_one() == 0
    finally:
        db.close()


def test_postgres_urls_get_psycopg_and_others_stay_as_written() -> None:
    assert engine_url("postgresql://ada@db:5432/svc") == "postgresql+psycopg://ada@db:5432/svc"
    assert (
        engine_url("postgres://ada:p%40ss@db/svc?sslmode=require")
        == "postgresql+psycopg://ada:p%40ss@db/svc?sslmode=require"
    )
    for kept in ("postgresql+psycopg2://ada@db/svc", "sqlite:////data/vectorsvc.db"):
        assert engine_url(kept) == kept


def test_times_come_back_in_utc_whatever_the_servers_time_zone(
    postgres_cluster: PostgresCluster, postgres_database_url: str
) -> None:
    # A server (or database) in another zone must not put its offset into the API's times.
    name = postgres_database_url.rsplit("/", 1)[1]
    postgres_cluster.psql("postgres", f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'")
    db = Database(postgres_database_url)
    try:
        db.migrate()
        with db.session() as session:
            create_workspace(session, name="acme")
        with db.session() as session:
            created = session.scalars(select(Workspace.created_at)).one()
            zone = session.execute(text("SHOW timezone")).scalar_one()
        assert zone == "UTC"
        assert created.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    finally:
        db.close()
