"""FairQueue: workspaces in turn, each workspace's runs oldest first."""

from __future__ import annotations

from vectorsvc.runs.scheduling import FairQueue


def test_workspaces_take_turns_and_runs_keep_their_order() -> None:
    queue = FairQueue()
    for workspace, run in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1")):
        queue.add(workspace, run)
    assert [queue.next() for _ in range(6)] == ["a1", "b1", "c1", "a1", "b1", "c1"]
    queue.remove("a1")
    queue.remove("b1")  # b has nothing left: it leaves the rotation
    assert [queue.next() for _ in range(4)] == ["a2", "c1", "a2", "c1"]
    queue.add("b", "b2")  # joins at the end of the rotation
    assert [queue.next() for _ in range(3)] == ["a2", "c1", "b2"]
    queue.remove("a3")  # cancelled while queued, behind a2
    queue.remove("a2")
    queue.remove("unknown")
    assert len(queue) == 2 and "c1" in queue and "a2" not in queue
    assert [queue.next() for _ in range(2)] == ["c1", "b2"]
    queue.remove("c1")
    queue.remove("b2")
    assert queue.next() is None
