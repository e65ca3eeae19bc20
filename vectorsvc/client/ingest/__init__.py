"""`vectorsvc ingest`: bulk ingestion through the public API.

`sources` reads the input into items and batches (`documents` extracts a file's text),
`state` remembers what the server acknowledged (resume), `runner` uploads, sends and
reports; `options` is what it is asked.
"""

from vectorsvc.client.ingest.options import IngestOptions, IngestSummary
from vectorsvc.client.ingest.runner import render_summary, run_ingest
from vectorsvc.client.ingest.sources import FieldMap, IngestError

__all__ = [
    "FieldMap",
    "IngestError",
    "IngestOptions",
    "IngestSummary",
    "render_summary",
    "run_ingest",
]
