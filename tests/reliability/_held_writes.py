"""`vectorsvc serve` whose vector store holds every write open: run it as a file.

    python tests/reliability/_held_writes.py serve --host 127.0.0.1 --port 8123

Each upsert of the embedded store writes the points, then appends a line to the file
`VECTORSVC_TEST_HELD_WRITES_MARKER` and keeps its thread for `VECTORSVC_TEST_HELD_WRITES_S`
seconds before the run goes on to its charge. A test that sees a new line and sends SIGKILL
at once kills the service between a write and its charge: the narrow window the real
service leaves, held open. Only the store's timing changes; the service is the real one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vectorsvc import cli
from vectorsvc.vectorstore.base import PointRecord
from vectorsvc.vectorstore.edge import EdgeVectorStore


def main() -> int:
    marker = Path(os.environ["VECTORSVC_TEST_HELD_WRITES_MARKER"])
    hold_s = float(os.environ.get("VECTORSVC_TEST_HELD_WRITES_S", "0.2"))
    real_upsert = EdgeVectorStore.upsert

    def held_upsert(self: EdgeVectorStore, collection: str, points: Sequence[PointRecord]) -> None:
        real_upsert(self, collection, points)
        with open(marker, "a", encoding="utf-8") as fh:
            fh.write(f"{len(points)}\n")
        time.sleep(hold_s)

    EdgeVectorStore.upsert = held_upsert  # type: ignore[method-assign]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
