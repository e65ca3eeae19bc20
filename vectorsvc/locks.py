"""Per-workspace asyncio locks (the check-write-charge section of index runs, and the
submission of background runs)."""

from __future__ import annotations

import asyncio


class WorkspaceLocks:
    """One asyncio lock per workspace."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, workspace_id: str) -> asyncio.Lock:
        lock = self._locks.get(workspace_id)
        if lock is None:
            lock = self._locks[workspace_id] = asyncio.Lock()
        return lock
