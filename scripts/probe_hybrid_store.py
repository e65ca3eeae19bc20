"""Store-level latency of dense, keyword and hybrid queries, one scope among 1,000.

    PYTHONPATH=$PWD .venv/bin/python scripts/probe_hybrid_store.py ../shared/datasets/scifact \
        [--points 100000] [--queries 300]

Fills an embedded store as `scripts/bench` does (synthetic unit vectors, keyword vectors of
30-word texts drawn from SciFact's words, 1,000 scopes), compacts it, warms it, then times
each query kind in the store (no HTTP, no model: the query vectors are random, the keyword
queries real SciFact queries), interleaved so machine noise hits all alike. Prints
p50/p95 per kind; the HTTP search adds the same embedding and service costs to each.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_beir_corpus, load_beir_queries, percentile  # noqa: E402

from vectorsvc.points.sparse import document_vector, query_vector  # noqa: E402
from vectorsvc.vectorstore import CollectionSpec, Filter, MatchValue, PointRecord  # noqa: E402
from vectorsvc.vectorstore.edge import EdgeVectorStore  # noqa: E402

SCOPES = 1000
DIM = 384


def one_query(
    store: EdgeVectorStore, kind: str, vector: np.ndarray, text: str, scope: Filter
) -> None:
    if kind == "dense":
        store.search("c", vector, filter=scope, limit=10)
    elif kind == "keyword":
        store.search_keyword("c", query_vector(text), filter=scope, limit=10, idf_scope=scope)
    else:
        store.search_hybrid(
            "c",
            vector,
            query_vector(text),
            filter=scope,
            limit=10,
            candidates=100,
            rrf_k=60,
            idf_scope=scope,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    words = np.array(sorted({w for d in load_beir_corpus(args.dataset) for w in d["text"].split()}))
    texts = list(load_beir_queries(args.dataset).values())
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp, EdgeVectorStore(Path(tmp)) as store:
        store.ensure_collection(
            CollectionSpec(
                name="c", dimension=DIM, tenant_key="_tenant", keyword_fields=(), sparse=True
            )
        )
        started = time.perf_counter()
        for low in range(0, args.points, 2000):
            high = min(args.points, low + 2000)
            vectors = rng.standard_normal((high - low, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            points = []
            for k, n in enumerate(range(low, high)):
                text = " ".join(rng.choice(words, size=30))
                points.append(
                    PointRecord(
                        id=str(uuid.UUID(int=n + 1)),
                        payload={"_tenant": f"s{n % SCOPES}", "text": text},
                        vector=vectors[k],
                        sparse=document_vector(text),
                    )
                )
            store.upsert("c", points)
        fill_s = time.perf_counter() - started
        started = time.perf_counter()
        store.optimize("c")
        optimize_s = time.perf_counter() - started
        store.warm()
        pick = random.Random(2)
        times: dict[str, list[float]] = {"dense": [], "keyword": [], "hybrid": []}
        for i in range(args.queries):
            scope = Filter((MatchValue("_tenant", f"s{pick.randrange(SCOPES)}"),))
            vector = rng.standard_normal(DIM).astype(np.float32)
            text = texts[i % len(texts)]
            for kind in times:
                t0 = time.perf_counter()
                one_query(store, kind, vector, text, scope)
                times[kind].append((time.perf_counter() - t0) * 1000)
    print(
        f"{args.points:,} points, {SCOPES} scopes: fill {fill_s:.1f}s, optimize {optimize_s:.1f}s"
    )
    for kind, ms in times.items():
        print(f"{kind:8s} p50 {statistics.median(ms):.3f} ms  p95 {percentile(ms, 0.95):.3f} ms")


if __name__ == "__main__":
    main()
