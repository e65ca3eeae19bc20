"""Model adapters: text and image embedders behind one interface. Never imports `vectorsvc`.

Only the interface and the factory are imported here; each backend (and torch with it) is
imported when `create_embedder` first asks for its kind.
"""

from embedders.base import (
    Embedder,
    Embeddings,
    MissingDependency,
    Modality,
    ModalityNotSupported,
    WeightsUnavailable,
    l2_normalise,
)
from embedders.factory import EmbedderKind, create_embedder, validate_config

__all__ = [
    "Embedder",
    "EmbedderKind",
    "Embeddings",
    "MissingDependency",
    "Modality",
    "ModalityNotSupported",
    "WeightsUnavailable",
    "create_embedder",
    "l2_normalise",
    "validate_config",
]
