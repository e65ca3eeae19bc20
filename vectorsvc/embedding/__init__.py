"""Model runtime: lazy, shared embedders and dynamic batching of concurrent requests.

`settings` builds embedders from registry entries, `threads` tunes the math threads,
`runtime` owns one model's weights and worker threads (queries first), and `lanes` batches
concurrent requests into model calls (`EmbeddingService`, what the rest of the service uses).
"""

from vectorsvc.embedding.lanes import EmbeddingService
from vectorsvc.embedding.runtime import ModelRuntime
from vectorsvc.embedding.settings import (
    BatchObserver,
    EmbedderLoader,
    EmbedderSettings,
    InputKind,
    WeightsCheck,
    default_loader,
)
from vectorsvc.embedding.threads import (
    configure_model_threads,
    cpu_count,
    math_threads_for,
    model_parallelism,
    set_math_threads,
)

__all__ = [
    "BatchObserver",
    "EmbedderLoader",
    "EmbedderSettings",
    "EmbeddingService",
    "InputKind",
    "ModelRuntime",
    "WeightsCheck",
    "configure_model_threads",
    "cpu_count",
    "default_loader",
    "math_threads_for",
    "model_parallelism",
    "set_math_threads",
]
