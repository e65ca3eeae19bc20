"""A typed Python client of the vectorsvc gateway API (httpx + pydantic, no server code).

Usage:

from vectorsvc.client import VectorsvcClient

with VectorsvcClient("http://localhost:8080", api_key) as client:
    client.index_texts("all-minilm-l6-v2", "docs", [{"id": "a", "text": "hello"}])
    hits = client.search("all-minilm-l6-v2", "docs", text="greeting")
"""

from vectorsvc.client._client import (
    VectorsvcClient,
    VectorsvcConnectionError,
    VectorsvcError,
    error_from_response,
    parse_retry_after,
    root_url,
    sniff_content_type,
)
from vectorsvc.client.schemas import (
    TERMINAL_STATUSES,
    Hit,
    ImageItem,
    IndexCounts,
    IndexResult,
    KnowledgeBase,
    MediaRef,
    ModelDetail,
    RunItemError,
    RunProgress,
    RunStatus,
    TextItem,
    UploadedMedia,
    UploadTicket,
    Wallet,
)

__all__ = [
    "TERMINAL_STATUSES",
    "Hit",
    "ImageItem",
    "IndexCounts",
    "IndexResult",
    "KnowledgeBase",
    "MediaRef",
    "ModelDetail",
    "RunItemError",
    "RunProgress",
    "RunStatus",
    "TextItem",
    "UploadTicket",
    "UploadedMedia",
    "VectorsvcClient",
    "VectorsvcConnectionError",
    "VectorsvcError",
    "Wallet",
    "error_from_response",
    "parse_retry_after",
    "root_url",
    "sniff_content_type",
]
