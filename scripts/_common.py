"""Helpers shared by the benchmark scripts: data loading and a service subprocess."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def load_beir_corpus(dataset: Path, limit: int | None = None) -> list[dict[str, str]]:
    """BEIR corpus rows as {"id", "text"} with text = title + " " + text."""
    path = dataset / "corpus.jsonl.gz"
    opener: Any = gzip.open if path.exists() else open
    if not path.exists():
        path = dataset / "corpus.jsonl"
    rows: list[dict[str, str]] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            rows.append({"id": doc["_id"], "text": f"{doc.get('title', '')} {doc['text']}".strip()})
            if limit is not None and len(rows) >= limit:
                break
    return rows


def load_beir_queries(dataset: Path) -> dict[str, str]:
    with open(dataset / "queries.jsonl", encoding="utf-8") as fh:
        return {q["_id"]: q["text"] for q in map(json.loads, fh)}


def load_qrels(dataset: Path, split: str = "test") -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(dataset / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningService:
    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"X-API-Key": self.key}, timeout=600, **kwargs
        )


@dataclass(frozen=True)
class Bench:
    """A data dir with a workspace and an API key, ready for `serve`."""

    data_dir: Path
    workspace_id: str
    key: str


def cli_env(data_dir: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "VECTORSVC_DATA_DIR": str(data_dir),
        "VECTORSVC_CREATE_DEV_WORKSPACE": "false",
    }
    env.update(extra_env or {})
    return env


def prepare(data_dir: Path, workspace: str = "bench") -> Bench:
    """Create `workspace` and an API key in a fresh data dir (through the CLI)."""
    cli = str(VENV_BIN / "vectorsvc")
    env = cli_env(data_dir)
    created = subprocess.run(
        [cli, "workspace", "create", workspace],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    # "created workspace bench (<id>)"
    workspace_id = created.stdout.strip().splitlines()[-1].rsplit("(", 1)[1].rstrip(")")
    out = subprocess.run(
        [cli, "keys", "create", "--workspace", workspace],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    # Credits, where runs are billed: best effort, a CLI without wallets is fine too.
    subprocess.run(
        [cli, "wallet", "topup", "--workspace", workspace, "--credits", "1000000"],
        env=env,
        check=False,
        capture_output=True,
    )
    return Bench(data_dir=data_dir, workspace_id=workspace_id, key=key)


@contextlib.contextmanager
def serve(
    bench: Bench, extra_env: dict[str, str] | None = None, log_path: Path | None = None
) -> Iterator[RunningService]:
    """Run `vectorsvc serve` on `bench.data_dir` on a free loopback port until exit."""
    port = free_port()
    cli = str(VENV_BIN / "vectorsvc")
    log_path = log_path or bench.data_dir.parent / "service.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [cli, "serve", "--port", str(port)],
        env=cli_env(bench.data_dir, extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start; see {log_path}")
            time.sleep(0.2)
        yield RunningService(url=url, key=bench.key, data_dir=bench.data_dir, process=proc)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def service(
    extra_env: dict[str, str] | None = None, data_dir: Path | None = None
) -> Iterator[RunningService]:
    """Start `vectorsvc serve` on a free loopback port with its own data dir."""
    with tempfile.TemporaryDirectory(prefix="vectorsvc-bench-") as tmp:
        bench = prepare(data_dir or Path(tmp) / "data")
        with serve(bench, extra_env, log_path=Path(tmp) / "service.log") as running:
            yield running


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print("-" * (width + 20))
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"\nwrote {path}")
