"""One process per store root: an exclusive, non-blocking flock on `root/.lock`.

Edge's WAL would refuse a second opener anyway, but only lazily, per shard; the root lock
refuses it at once. Within the process, `EdgeVectorStore` guards its shard table with one
lock and serialises the writes to each collection with a lock of its own.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vectorsvc.vectorstore.base import VectorStoreError
from vectorsvc.vectorstore.edge.layout import LOCK_FILE


def acquire_root_lock(root: Path) -> int:
    """The locked file descriptor; `VectorStoreError` if another store holds the root."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise VectorStoreError(f"{root} is already open by another EdgeVectorStore") from exc
    return fd


def release_root_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
