"""Thread tuning for model calls: OpenMP's wait policy, math threads per call, workers."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from vectorsvc.embedding.settings import InputKind


def configure_model_threads() -> None:
    """Make the models' OpenMP threads sleep, not spin, between parallel regions.

    With the default (spinning) policy torch's threads burn the cores they wait on, starving
    the event loop and anything else on the machine; on 2 shared cores a query took many
    times as long (docs/performance.md). It only takes effect before torch loads;
    an explicit OMP_WAIT_POLICY in the environment wins.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_math_threads(threads: int) -> None:
    """The calling thread's math threads (torch's intra-op threads, which OpenMP keeps per
    thread). Models that are not on torch size their thread pools themselves."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, threads))


def math_threads_for(kind: InputKind, inputs: Sequence[Any], threads: int) -> int:
    """Math threads for one model call: one for a lone query or two (short texts: their
    small matrices split badly over threads: docs/performance.md),
    `threads` otherwise."""
    if kind == "query" and len(inputs) <= 2 and all(isinstance(x, str) for x in inputs):
        return 1
    return threads


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def model_parallelism(workers: int, threads: int) -> tuple[int, int]:
    """(workers, math threads per worker) from the settings, where 0 means automatic: one
    worker with a math thread per CPU. Measured on 2 cores (docs/performance.md): two
    single-threaded workers served 16 clients no faster and held more memory; a lone
    short query, the one case where one thread wins, gets one anyway (`math_threads_for`)."""
    workers = workers or 1
    threads = threads or max(1, cpu_count() // workers)
    return workers, threads
