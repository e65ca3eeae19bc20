"""`vectorsvc ingest` and `vectorsvc search`: the client's commands (argparse + rich).

They talk to a running service through `VectorsvcClient` only, like any other client:
the gateway URL and API key come from flags, else `AIMP_GATEWAY_URL` / `AIMP_API_KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from vectorsvc.client._client import VectorsvcClient, VectorsvcError
from vectorsvc.client.schemas import Hit

ENV_GATEWAY_URL = "AIMP_GATEWAY_URL"
ENV_API_KEY = "AIMP_API_KEY"
EXIT_OK, EXIT_FAILURES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class _UsageError(Exception):
    pass


def _error(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return EXIT_ERROR


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    url = args.gateway_url or os.environ.get(ENV_GATEWAY_URL, "")
    key = args.api_key or os.environ.get(ENV_API_KEY, "")
    missing = []
    if not url:
        missing.append(f"--gateway-url or ${ENV_GATEWAY_URL} (e.g. http://localhost:8080)")
    if not key:
        missing.append(f"--api-key or ${ENV_API_KEY}")
    if missing:
        raise _UsageError("no gateway to talk to: set " + " and ".join(missing))
    return url, key


def _stdout_console() -> Console:
    # Piped or captured output gets a wide table rather than rich's 80-column default, so
    # ids and scores are not cut.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def cmd_ingest(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the ingester.
    from vectorsvc.client.ingest import (
        FieldMap,
        IngestError,
        IngestOptions,
        render_summary,
        run_ingest,
    )

    try:
        url, key = _credentials(args)
        fields = FieldMap(
            id_field=args.id_field or "id",
            text_fields=tuple(args.text_field or ["text"]),
            metadata_fields=tuple(args.metadata_field) if args.metadata_field else None,
        )
        options = IngestOptions(
            path=Path(args.path),
            model=args.model,
            scope=args.scope,
            gateway_url=url,
            api_key=key,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            background=args.background,
            state_file=Path(args.state_file) if args.state_file else None,
            resume=not args.no_resume,
            progress=not args.no_progress,
            timeout=args.timeout,
            retries=args.retries,
            fields=fields,
        )
        summary = run_ingest(options)
    except (_UsageError, IngestError, ValueError) as exc:
        return _error(str(exc))
    render_summary(summary, _stdout_console())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.fatal:
        return EXIT_ERROR
    return EXIT_FAILURES if summary.failures else EXIT_OK


def _snippet(value: str, limit: int) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def hits_table(hits: list[Hit]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")  # no side borders: greppable
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("text / media", max_width=80)
    table.add_column("metadata", max_width=60)
    for rank, hit in enumerate(hits, start=1):
        what = _snippet(hit.text, 80) if hit.text is not None else (hit.media_ref or "")
        metadata = json.dumps(hit.metadata, ensure_ascii=False, separators=(",", ":"))
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", what, _snippet(metadata, 60))
    return table


def cmd_search(args: argparse.Namespace) -> int:
    try:
        url, key = _credentials(args)
        given = [x for x in (args.query, args.image, args.media_ref) if x is not None]
        if len(given) != 1:
            raise _UsageError("give exactly one of a query text, --image PATH or --media-ref REF")
        flt: dict[str, Any] | None = None
        if args.filter:
            try:
                flt = json.loads(args.filter)
            except ValueError as exc:
                raise _UsageError(f"--filter is not JSON: {exc}") from None
            if not isinstance(flt, dict):
                raise _UsageError('--filter must be a JSON object, e.g. \'{"lang": "en"}\'')
        with VectorsvcClient(url, key, timeout=args.timeout, retries=args.retries) as client:
            media_ref = args.media_ref
            if args.image is not None:
                media_ref = client.upload_media(Path(args.image))
            hits = client.search(
                args.model,
                args.scope,
                text=args.query,
                media_ref=media_ref,
                top_k=args.top_k,
                filter=flt,
            )
    except (_UsageError, ValueError, OSError) as exc:
        return _error(str(exc))
    except VectorsvcError as exc:
        return _error(str(exc))
    if args.json:
        for hit in hits:
            sys.stdout.write(hit.model_dump_json(exclude_none=True) + "\n")
        return EXIT_OK
    out = _stdout_console()
    if not hits:
        out.print(f"no hits in scope {args.scope!r} of model {args.model!r}")
    else:
        out.print(hits_table(hits))
    return EXIT_OK


def _connection_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--gateway-url", help=f"the gateway URL, with or without /api (default ${ENV_GATEWAY_URL})"
    )
    parent.add_argument("--api-key", help=f"an API key (default ${ENV_API_KEY})")
    parent.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per request (default 300)"
    )
    parent.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries on 429, 5xx and connection errors, with backoff (default 5)",
    )
    parent.add_argument("--model", required=True, help="model slug, e.g. all-minilm-l6-v2")
    parent.add_argument("--scope", required=True, help="the knowledge base's scope")
    return parent


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `ingest` and `search` to the `vectorsvc` command's subcommands."""
    parent = _connection_flags()
    ingest = sub.add_parser(
        "ingest",
        parents=[parent],
        help=(
            "index a folder of documents or images, or a JSONL/CSV/Parquet file of texts, "
            "through the API (resumable)"
        ),
        description=(
            "Index a folder (documents: .txt .md .html .pdf .docx, text extracted; images: "
            "uploaded; id = the path relative to the folder; what the model takes is read) "
            "or a JSONL / CSV / Parquet file of texts (fields id, text and metadata, or the "
            "ones --id-field, --text-field and --metadata-field name) through a running "
            "service. Re-running the same command after an interruption resumes: uploads and "
            "acknowledged batches are remembered in a state file under "
            "$XDG_CACHE_HOME/vectorsvc/ingest/ (~/.cache by default)."
        ),
    )
    ingest.add_argument(
        "path",
        help="a folder of documents or images, or a .jsonl / .csv (.gz too) / .parquet file",
    )
    ingest.add_argument(
        "--id-field", metavar="NAME", help="the field holding the item id (default id)"
    )
    ingest.add_argument(
        "--text-field",
        metavar="NAME",
        action="append",
        help="a field of the text (default text); repeat it to join several with a blank "
        "line, e.g. --text-field title --text-field text",
    )
    ingest.add_argument(
        "--metadata-field",
        metavar="NAME",
        action="append",
        help="a field to keep as metadata (repeatable); default: every other field",
    )
    ingest.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    ingest.add_argument(
        "--batch-size", type=int, default=100, help="items per index run (default 100)"
    )
    ingest.add_argument(
        "--background", action="store_true", help="send each batch as a background run and poll"
    )
    ingest.add_argument("--state-file", help="where to keep the resume state (default: cache)")
    ingest.add_argument(
        "--no-resume", action="store_true", help="ignore the state file and send everything"
    )
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=cmd_ingest)

    search = sub.add_parser(
        "search",
        parents=[parent],
        help="search a knowledge base through the API and print the hits as a table",
    )
    search.add_argument("query", nargs="?", help="the query text")
    search.add_argument("--image", help="search by this image file (uploaded first)")
    search.add_argument("--media-ref", help="search by an uploaded image's media_ref")
    search.add_argument("--top-k", type=int, default=10, help="how many hits (default 10)")
    search.add_argument(
        "--filter", help='a metadata filter as JSON, e.g. \'{"year": {"gte": 2020}}\''
    )
    search.add_argument("--json", action="store_true", help="one JSON object per hit instead")
    search.set_defaults(func=cmd_search)
