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


@contextlib.contextmanager
def service(
    extra_env: dict[str, str] | None = None, data_dir: Path | None = None
) -> Iterator[RunningService]:
    """Start `vectorsvc serve` on a free loopback port with its own data dir."""
    with tempfile.TemporaryDirectory(prefix="vectorsvc-bench-") as tmp:
        data = data_dir or Path(tmp) / "data"
        port = free_port()
        env = {
            **os.environ,
            "VECTORSVC_DATA_DIR": str(data),
            "VECTORSVC_CREATE_DEV_WORKSPACE": "false",
        }
        env.update(extra_env or {})
        cli = str(VENV_BIN / "vectorsvc")
        subprocess.run(
            [cli, "workspace", "create", "bench"], env=env, check=True, capture_output=True
        )
        out = subprocess.run(
            [cli, "keys", "create", "--workspace", "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = out.stdout.strip().splitlines()[-1]
        log = open(Path(tmp) / "service.log", "wb")
        proc = subprocess.Popen(
            [cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service did not start; see {log.name}")
                time.sleep(0.2)
            yield RunningService(url=url, key=key, data_dir=data, process=proc)
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
            log.close()


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
