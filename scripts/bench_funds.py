"""Search latency with funds reserved and charged in the database: PostgreSQL against SQLite.

One `vectorsvc serve` process on each database (each with its own embedded store holding
the same small scope), started side by side; searches go to them in turn, one at a time,
so that the machine's noise hits both alike. Each search reserves its cost in the database
and writes its charge before it answers (`billing.funds`): two short transactions.

PostgreSQL is a throwaway cluster (the tests' `tests/pgcluster.py`), durable as a
production one: fsync and synchronous_commit on (`--fast-pg` turns them off, as the tests
do). SQLite runs as the service configures it (WAL, synchronous=NORMAL).

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_funds.py [--searches 300] [--out F]

`--code-dir DIR` adds a third process on SQLite running another checkout's `vectorsvc`
(the code before a change: `git archive <commit> vectorsvc embedders | tar -x -C DIR`).

Prints a table and writes the numbers to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests import pgcluster  # noqa: E402
from tests.reliability._server import ServerProcess  # noqa: E402
from vectorsvc.auth.keys import create_api_key  # noqa: E402
from vectorsvc.db.database import Database  # noqa: E402
from vectorsvc.workspaces.service import create_workspace  # noqa: E402

MODEL = "all-minilm-l6-v2"
SCOPE = "bench"
TOPICS = ("tides", "glaciers", "volcanoes", "orchards", "bridges", "comets", "violins", "bees")


def psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def make_key(url: str) -> str:
    """A workspace and key in the database the server migrated (its own code's schema)."""
    db = Database(url)
    try:
        with db.session() as session:
            workspace = create_workspace(session, name="bench")
            return create_api_key(session, workspace=workspace).plaintext
    finally:
        db.close()


def fill(client: httpx.Client, key: str) -> None:
    items = [
        {"id": f"d{i}", "text": f"notes on {TOPICS[i % len(TOPICS)]}, page {i}"} for i in range(200)
    ]
    body = {"model": MODEL, "mode": "index", "scope": SCOPE, "input": {"items": items}}
    r = client.post("/api/runs", json=body, headers={"X-API-Key": key})
    r.raise_for_status()


def search(client: httpx.Client, key: str, n: int) -> float:
    body = {
        "model": MODEL,
        "mode": "search",
        "scope": SCOPE,
        "input": {"text": f"something about {TOPICS[n % len(TOPICS)]}"},
        "params": {"top_k": 10},
    }
    started = time.perf_counter()
    r = client.post("/api/runs", json=body, headers={"X-API-Key": key})
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--fast-pg", action="store_true", help="fsync off, as the tests run")
    parser.add_argument("--code-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_funds.json"))
    args = parser.parse_args()
    reason = pgcluster.missing_reason()
    if reason is not None:
        print(reason, file=sys.stderr)  # noqa: T201
        return 2
    if not args.fast_pg:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            pgcluster._SERVER_SETTINGS.pop(setting, None)
    root = Path(tempfile.mkdtemp(prefix="bench-funds-"))
    # A folder of its own: the cluster's belongs to the postgres user.
    cluster = pgcluster.PostgresCluster(Path(tempfile.mkdtemp(prefix="bench-funds-pg-")))
    cluster.start()
    servers: dict[str, ServerProcess] = {}
    try:
        pg_url = psycopg_url(cluster.url())
        plans: list[tuple[str, str | None, Path | None]] = [
            ("sqlite", None, None),
            ("postgresql", pg_url, None),
        ]
        if args.code_dir is not None:
            plans.append(("sqlite, --code-dir", None, args.code_dir))
        keys: dict[str, str] = {}
        for name, url, code_dir in plans:
            data_dir = root / name.replace(",", "").replace(" ", "-")
            db_url = url or f"sqlite:///{(data_dir / 'vectorsvc.db').resolve()}"
            data_dir.mkdir(parents=True)
            env = {"VECTORSVC_DATABASE_URL": db_url}
            if code_dir is not None:
                env["PYTHONPATH"] = f"{code_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
            servers[name] = ServerProcess(data_dir, root / f"{data_dir.name}.log", env=env)
            servers[name].start(timeout=600)
            keys[name] = make_key(db_url)
        clients = {name: httpx.Client(base_url=s.url, timeout=60) for name, s in servers.items()}
        for name, client in clients.items():
            fill(client, keys[name])
            for n in range(args.warmup):
                search(client, keys[name], n)
        times: dict[str, list[float]] = {name: [] for name in clients}
        for n in range(args.searches):
            for name, client in clients.items():  # in turn: noise hits each alike
                times[name].append(search(client, keys[name], n))
        for client in clients.values():
            client.close()
    finally:
        for server in servers.values():
            server.stop()
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    rows = {}
    for name, samples in times.items():
        q = statistics.quantiles(samples, n=100)
        rows[name] = {
            "p50_ms": round(statistics.median(samples) * 1000, 2),
            "p90_ms": round(q[89] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2),
            "searches": len(samples),
        }
    print(f"{'database':<22}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")  # noqa: T201
    for name, row in rows.items():
        print(  # noqa: T201
            f"{name:<22}{row['p50_ms']:>10}{row['p90_ms']:>10}{row['p99_ms']:>10}"
        )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "postgresql": "fsync off" if args.fast_pg else "fsync and synchronous_commit on",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
