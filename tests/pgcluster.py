"""One throwaway PostgreSQL 15 cluster per test session, on a free loopback port.

`initdb` and `pg_ctl` from the Debian packages (/usr/lib/postgresql/15/bin, or the folder in
VECTORSVC_TEST_POSTGRES_BIN) build and start a cluster in a temp dir; it is stopped and
removed at session end. As root the cluster runs as the `postgres` user (PostgreSQL refuses
to run as root). Trust authentication on 127.0.0.1 only; fsync off: nothing here must
outlive the session.

Fixtures (registered in tests/conftest.py):
- `postgres_cluster` (session): the running `PostgresCluster`.
- `postgres_url` (session): `postgresql://postgres@127.0.0.1:PORT/vectorsvc`, a database
  shared by the whole session.
- `postgres_database_url` (function): a URL to a new, empty database created for this test
  and dropped after it.

Without the binaries these fixtures skip, saying what to install (`make test` installs them).
SQL goes through the cluster's own `psql`, so this module needs no Python driver.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
SESSION_DATABASE = "vectorsvc"
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
}


def bin_dir() -> Path:
    return Path(os.environ.get("VECTORSVC_TEST_POSTGRES_BIN", str(DEFAULT_BIN_DIR)))


def missing_reason() -> str | None:
    """Why no cluster can start here, or None when it can."""
    folder = bin_dir()
    for tool in ("initdb", "pg_ctl", "psql"):
        if not os.access(folder / tool, os.X_OK):
            return (
                f"PostgreSQL 15 server binaries not found in {folder} ({tool} missing): "
                "install them with `apt-get install postgresql` (make test does) or set "
                "VECTORSVC_TEST_POSTGRES_BIN"
            )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root but there is no `postgres` user to run the cluster as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """A PostgreSQL cluster in `root`, listening on 127.0.0.1:`port` once started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.log_file = root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            # PostgreSQL will not run as root; the temp dir must be the postgres user's.
            account = pwd.getpwnam(SUPERUSER)
            os.chown(root, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir() / name), *args],
            capture_output=True,
            text=True,
            check=check,
            cwd=self.root,
            timeout=120,
            **self._run_as,
        )

    def start(self) -> None:
        self._tool("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        options = " ".join(f"-c {key}={value}" for key, value in _SERVER_SETTINGS.items())
        for _attempt in range(5):
            # The port is free when picked; another process may take it before the
            # server binds, so try a few.
            self.port = _free_port()
            started = self._tool(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                "-o", f"-p {self.port} -k {self.root} {options}", "start",
                check=False,
            )  # fmt: skip
            if started.returncode == 0:
                self.psql("postgres", f'CREATE DATABASE "{SESSION_DATABASE}"')
                return
        log = self.log_file.read_text() if self.log_file.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._tool("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop", check=False)

    def url(self, database: str = SESSION_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` in `database` as the superuser; returns psql's unaligned output."""
        done = subprocess.run(
            [str(bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed on {sql!r}: {done.stderr.strip()}")
        return done.stdout

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE ends connections a test's engine still holds in its pool.
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dump_database(url: str) -> bytes:
    """Everything stored in the PostgreSQL database at `url`, as `pg_dump` writes it."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    done = subprocess.run(
        [str(bin_dir() / "pg_dump"), "-h", str(parsed.host), "-p", str(parsed.port),
         "-U", str(parsed.username), "-d", str(parsed.database)],
        capture_output=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="vectorsvc-pg-"))
    cluster = PostgresCluster(root)
    # atexit as well: a session that dies before fixture teardown still stops the server.
    atexit.register(cluster.stop)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.url()


@pytest.fixture
def postgres_database_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)
