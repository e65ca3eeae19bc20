"""Which background run's chunk goes next: workspaces take turns, each its oldest run first.

Round robin at chunk granularity: one chunk of workspace A's oldest run, then one of B's,
and so on; a workspace with nothing left leaves the rotation, one that queues a run joins
at its end. So a workspace's small run waits for at most one chunk of every other workspace
with work queued, however many items those workspaces have queued.
"""

from __future__ import annotations

from collections import deque


class FairQueue:
    """The active runs: first in, first out per workspace; workspaces in turn."""

    def __init__(self) -> None:
        self._runs: dict[str, deque[str]] = {}  # workspace id -> its run ids, oldest first
        self._turns: deque[str] = deque()  # workspaces with runs, the next one first
        self._workspace_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._workspace_of)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._workspace_of

    def add(self, workspace_id: str, run_id: str) -> None:
        if run_id in self._workspace_of:
            return
        runs = self._runs.get(workspace_id)
        if runs is None:
            runs = self._runs[workspace_id] = deque()
            self._turns.append(workspace_id)
        runs.append(run_id)
        self._workspace_of[run_id] = workspace_id

    def next(self) -> str | None:
        """The run whose chunk goes now (the oldest run of the workspace whose turn it is);
        that workspace goes to the end of the rotation. None when nothing is queued."""
        if not self._turns:
            return None
        workspace_id = self._turns[0]
        self._turns.rotate(-1)
        return self._runs[workspace_id][0]

    def remove(self, run_id: str) -> None:
        """The run ended or was cancelled (no-op for an unknown run)."""
        workspace_id = self._workspace_of.pop(run_id, None)
        if workspace_id is None:
            return
        runs = self._runs[workspace_id]
        runs.remove(run_id)
        if not runs:
            del self._runs[workspace_id]
            self._turns.remove(workspace_id)

    def clear(self) -> None:
        self._runs.clear()
        self._turns.clear()
        self._workspace_of.clear()
