"""Cost of parsing request bodies with `vectorsvc.json_body` (NaN/Infinity refused) against
`json.loads` (what Starlette's `Request.json` calls), and of the extra request object that
`JSONRoute` makes for a route with a body. Prints a table; run on demand:

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_json_body.py
"""

from __future__ import annotations

import json
import timeit

from starlette.requests import Request

from vectorsvc.json_body import StandardJSONRequest, loads

SEARCH = json.dumps(
    {
        "model": "all-minilm-l6-v2",
        "mode": "search",
        "scope": "playground",
        "input": {"text": "Hello"},
        "params": {"top_k": 5, "filter": {"lang": "en", "year": {"gte": 2000}}},
    }
).encode()
INDEX = json.dumps(
    {
        "model": "all-minilm-l6-v2",
        "mode": "index",
        "scope": "kb",
        "input": {
            "items": [
                {"id": f"doc-{i}", "text": "some words " * 20, "metadata": {"n": i, "t": "x"}}
                for i in range(1000)
            ]
        },
    }
).encode()
# The same items in non-ASCII text, as an ensure_ascii client sends it (\u escapes, an
# emoji as a surrogate pair): the body holds backslashes, so the surrogate check runs.
ESCAPED = json.dumps(
    json.loads(INDEX.replace(b"some words", "s\u00f6me w\u00f6rds \U0001f600".encode()))
).encode()
SCOPE = {"type": "http", "method": "POST", "path": "/api/runs", "headers": []}


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


def best(stmt: object, number: int) -> float:
    """Best of 7 runs, in microseconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=7)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    rows = [
        ("json.loads, search body", best(lambda: json.loads(SEARCH), 20000)),
        ("json_body.loads, search body", best(lambda: loads(SEARCH), 20000)),
        ("json.loads, 1,000-item index body", best(lambda: json.loads(INDEX), 50)),
        ("json_body.loads, 1,000-item index body", best(lambda: loads(INDEX), 50)),
        ("json.loads, same with escapes", best(lambda: json.loads(ESCAPED), 50)),
        ("json_body.loads, same with escapes", best(lambda: loads(ESCAPED), 50)),
        ("Request(scope, receive)", best(lambda: Request(SCOPE, _receive), 20000)),
        (
            "StandardJSONRequest(scope, receive)",
            best(lambda: StandardJSONRequest(SCOPE, _receive), 20000),
        ),
    ]
    print(f"{'operation':<42} {'us/call':>10}")  # noqa: T201
    for name, micros in rows:
        print(f"{name:<42} {micros:>10.2f}")  # noqa: T201
    print(f"search body: {len(SEARCH)} bytes; index body: {len(INDEX)} bytes")  # noqa: T201


if __name__ == "__main__":
    main()
