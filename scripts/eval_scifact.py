"""Retrieval quality through the API against the raw model with exact search.

    .venv/bin/python scripts/eval_scifact.py ../shared/datasets/scifact

Indexes the corpus (title + " " + text) through POST /api/runs, runs the test queries
through search, and prints nDCG@10 beside the raw model with exact (brute-force cosine)
search over the same texts, which the model truncates to what it reads (256 word pieces).
The service splits a longer text into chunks and scores a document by its best chunk: it
must not be worse. Writes bench/eval_scifact.json.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
from _common import (
    ROOT,
    load_beir_corpus,
    load_beir_queries,
    load_qrels,
    print_table,
    service,
    write_results,
)

MODEL = "all-minilm-l6-v2"


def ndcg_at_k(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    scores = []
    for qid, rels in qrels.items():
        ranking = ranked.get(qid, [])[:k]
        dcg = sum(rels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking))
        ideal = sorted(rels.values(), reverse=True)[:k]
        idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
        scores.append(dcg / idcg if idcg else 0.0)
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--subset",
        type=int,
        metavar="N",
        help="a quicker run: only the test queries' relevant documents and N others (random, "
        "seed 7); the figures are then not comparable with the full corpus's",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "eval_scifact.json")
    args = parser.parse_args()

    corpus = load_beir_corpus(args.dataset)
    queries = load_beir_queries(args.dataset)
    qrels = load_qrels(args.dataset, "test")
    test_queries = {qid: queries[qid] for qid in qrels}
    if args.subset is not None:
        relevant = {doc for rels in qrels.values() for doc in rels}
        others = [d for d in corpus if d["id"] not in relevant]
        corpus = [d for d in corpus if d["id"] in relevant] + random.Random(7).sample(
            others, min(args.subset, len(others))
        )

    from embedders.factory import create_embedder
    from vectorsvc.embedding import configure_model_threads

    configure_model_threads()  # as the service does: idle OpenMP threads sleep, not spin
    started = time.perf_counter()
    embedder = create_embedder("sentence_transformer_text")
    doc_vectors = embedder.embed_texts([d["text"] for d in corpus])
    qids = list(test_queries)
    query_vectors = embedder.embed_queries([test_queries[q] for q in qids])
    scores = query_vectors @ doc_vectors.T
    top = np.argsort(-scores, axis=1)[:, :10]
    raw_ranked = {qid: [corpus[j]["id"] for j in top[i]] for i, qid in enumerate(qids)}
    raw_ndcg = ndcg_at_k(raw_ranked, qrels)
    raw_s = time.perf_counter() - started
    del embedder

    started = time.perf_counter()
    # The rate limit (1,200 runs a minute) would cut off the queries of a fast service.
    chunks = 0
    with service({"VECTORSVC_RATE_LIMIT_PER_MINUTE": "0"}) as svc, svc.client() as client:
        for i in range(0, len(corpus), args.batch):
            items = [{"id": d["id"], "text": d["text"]} for d in corpus[i : i + args.batch]]
            r = client.post(
                "/api/runs",
                json={
                    "model": MODEL,
                    "mode": "index",
                    "scope": "scifact",
                    "input": {"items": items},
                },
            )
            r.raise_for_status()
            chunks += r.json()["usage"]["chunks"]
        api_ranked: dict[str, list[str]] = {}
        for qid in qids:
            r = client.post(
                "/api/runs",
                json={
                    "model": MODEL,
                    "mode": "search",
                    "scope": "scifact",
                    "input": {"text": test_queries[qid]},
                    "params": {"top_k": 10},
                },
            )
            r.raise_for_status()
            api_ranked[qid] = [h["id"] for h in r.json()["output"]["hits"]]
    api_ndcg = ndcg_at_k(api_ranked, qrels)
    api_s = time.perf_counter() - started

    same_top10 = sum(api_ranked[q] == raw_ranked[q] for q in qids) / len(qids)
    results = {
        "corpus": len(corpus),
        "chunks": chunks,
        "queries": len(qids),
        "ndcg10_api": api_ndcg,
        "ndcg10_raw_exact": raw_ndcg,
        "ndcg10_delta": api_ndcg - raw_ndcg,
        "identical_top10_fraction": same_top10,
        "published_mteb_ndcg10": 0.645,
        "raw_seconds": raw_s,
        "api_seconds": api_s,
    }
    print_table(
        f"SciFact: {len(corpus)} docs, {len(qids)} test queries",
        [
            ("chunks indexed", f"{chunks}"),
            ("nDCG@10 through the API (chunked)", f"{api_ndcg:.4f}"),
            ("nDCG@10 raw model, exact search, truncated", f"{raw_ndcg:.4f}"),
            ("difference", f"{api_ndcg - raw_ndcg:+.4f}"),
            ("queries with identical top 10", f"{same_top10:.1%}"),
            ("published (MTEB)", "0.645"),
        ],
    )
    write_results(args.out, results)
    if api_ndcg < raw_ndcg - 0.005:
        raise SystemExit("FAIL: nDCG@10 through the API is worse than the raw model's")


if __name__ == "__main__":
    main()
