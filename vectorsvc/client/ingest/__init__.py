"""`vectorsvc ingest`: bulk ingestion through the public API (see `runner`)."""

from vectorsvc.client.ingest.runner import (
    IngestError,
    IngestOptions,
    IngestSummary,
    render_summary,
    run_ingest,
)

__all__ = ["IngestError", "IngestOptions", "IngestSummary", "render_summary", "run_ingest"]
