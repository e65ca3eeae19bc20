"""Text ingest and search: through HTTP against the raw model, in one run.

    .venv/bin/python scripts/bench_text.py ../shared/datasets/scifact [--docs 2000]

Prints a table and writes bench/text.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    ROOT,
    load_beir_corpus,
    load_beir_queries,
    percentile,
    print_table,
    service,
    write_results,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dataset", type=Path, help="a BEIR dataset folder (e.g. ../shared/datasets/scifact)"
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "text.json")
    args = parser.parse_args()

    docs = load_beir_corpus(args.dataset, args.docs)
    queries = list(load_beir_queries(args.dataset).values())[: args.queries]

    from embedders.factory import create_embedder

    embedder = create_embedder("sentence_transformer_text")
    embedder.embed_texts([d["text"] for d in docs[:64]])  # warm up
    started = time.perf_counter()
    for i in range(0, len(docs), args.batch):
        embedder.embed_texts([d["text"] for d in docs[i : i + args.batch]])
    raw_s = time.perf_counter() - started
    raw_tput = len(docs) / raw_s
    raw_query_ms = []
    for q in queries:
        t = time.perf_counter()
        embedder.embed_queries([q])
        raw_query_ms.append((time.perf_counter() - t) * 1000)
    del embedder

    with service() as svc, svc.client() as client:

        def run(body: dict[str, object]) -> dict[str, object]:
            r = client.post("/api/runs", json=body)
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

        run(
            {
                "model": "all-minilm-l6-v2",
                "mode": "index",
                "scope": "warm",
                "input": {"items": [{"id": "w", "text": "warm up"}]},
            }
        )
        started = time.perf_counter()
        for i in range(0, len(docs), args.batch):
            items = [{"id": d["id"], "text": d["text"]} for d in docs[i : i + args.batch]]
            run(
                {
                    "model": "all-minilm-l6-v2",
                    "mode": "index",
                    "scope": "scifact",
                    "input": {"items": items},
                }
            )
        http_s = time.perf_counter() - started
        http_tput = len(docs) / http_s
        search_ms = []
        for q in queries:
            t = time.perf_counter()
            run(
                {
                    "model": "all-minilm-l6-v2",
                    "mode": "search",
                    "scope": "scifact",
                    "input": {"text": q},
                    "params": {"top_k": 10},
                }
            )
            search_ms.append((time.perf_counter() - t) * 1000)

    results = {
        "docs": len(docs),
        "batch": args.batch,
        "raw_encode_docs_per_s": raw_tput,
        "http_index_docs_per_s": http_tput,
        "ingest_ratio": http_tput / raw_tput,
        "raw_encode_p50_ms": percentile(raw_query_ms, 0.5),
        "search_p50_ms": percentile(search_ms, 0.5),
        "search_p95_ms": percentile(search_ms, 0.95),
        "search_overhead_p50_ms": percentile(search_ms, 0.5) - percentile(raw_query_ms, 0.5),
    }
    print_table(
        f"Text: {len(docs)} SciFact docs, batch {args.batch}, {len(queries)} queries",
        [
            ("raw encode (docs/s)", f"{raw_tput:8.1f}"),
            ("index via HTTP (docs/s)", f"{http_tput:8.1f}"),
            ("ingest ratio (HTTP / raw)", f"{http_tput / raw_tput:8.3f}"),
            ("raw single-query encode p50 (ms)", f"{results['raw_encode_p50_ms']:8.2f}"),
            ("search via HTTP p50 (ms)", f"{results['search_p50_ms']:8.2f}"),
            ("search via HTTP p95 (ms)", f"{results['search_p95_ms']:8.2f}"),
            ("search overhead p50 (ms)", f"{results['search_overhead_p50_ms']:8.2f}"),
        ],
    )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
