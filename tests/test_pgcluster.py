"""The session's throwaway PostgreSQL: it runs, and each test gets its own empty database."""

from __future__ import annotations

from tests.pgcluster import PostgresCluster


def test_session_database_answers(postgres_cluster: PostgresCluster, postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    database = postgres_url.rsplit("/", 1)[1]
    assert postgres_cluster.psql(database, "SHOW server_version_num").strip().startswith("15")


def test_each_test_gets_a_new_empty_database(
    postgres_cluster: PostgresCluster, postgres_database_url: str
) -> None:
    name = postgres_database_url.rsplit("/", 1)[1]
    tables = postgres_cluster.psql(
        name, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    )
    assert tables.strip() == "0"
    postgres_cluster.psql(name, "CREATE TABLE marker (id int)")
    other = postgres_cluster.create_database()
    assert other != name
    assert postgres_cluster.psql(other, "SELECT to_regclass('marker') IS NULL").strip() == "t"
    postgres_cluster.drop_database(other)
    listed = postgres_cluster.psql("postgres", "SELECT datname FROM pg_database").split()
    assert other not in listed and name in listed
