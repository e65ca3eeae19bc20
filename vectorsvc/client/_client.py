"""`VectorsvcClient`: the gateway REST API over httpx, with retries and typed answers."""

from __future__ import annotations

import email.utils
import logging
import mimetypes
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from vectorsvc import __version__
from vectorsvc.client.schemas import (
    Hit,
    ImageItem,
    IndexResult,
    KnowledgeBase,
    ModelDetail,
    RunStatus,
    TextItem,
    UploadedMedia,
    UploadTicket,
    Wallet,
)

logger = logging.getLogger("vectorsvc.client")

# Statuses worth another try: rate limited, and server-side trouble that may pass.
# 501 (not implemented) and 505 never pass by waiting.
_NOT_RETRIED_5XX = frozenset({501, 505})


class VectorsvcError(Exception):
    """An error answer of the service, rebuilt from its envelope
    `{"error": {"code", "message", "field"}}`; `status` 0 means no answer at all."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"VectorsvcError(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )


class VectorsvcConnectionError(VectorsvcError):
    """The service could not be reached (or did not answer in time), retries exhausted."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "connection_error", message)


def error_from_response(response: httpx.Response) -> VectorsvcError:
    """The `VectorsvcError` a non-2xx response stands for (any body, envelope or not)."""
    request_id = response.headers.get("x-request-id")
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        field = error.get("field")
        details = error.get("details")
        return VectorsvcError(
            response.status_code,
            error["code"],
            str(error.get("message", "")),
            field if isinstance(field, str) else None,
            details=details if isinstance(details, dict) else None,
            request_id=request_id,
        )
    # Not our envelope (a proxy in front, say): keep what there is.
    text = response.text.strip()[:500] or response.reason_phrase
    return VectorsvcError(
        response.status_code, f"http_{response.status_code}", text, request_id=request_id
    )


def root_url(base_url: str) -> str:
    """The gateway URL without a trailing `/api`: the client adds `/api/...` itself."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the gateway URL must start with http:// or https://, got {base_url!r}")
    return url


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_content_type(data: bytes, filename: str | None = None) -> str:
    """The content type from magic bytes (what the server checks), else from the name."""
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if filename:
        guessed, _ = mimetypes.guess_type(filename)
        if guessed:
            return guessed
    return "application/octet-stream"


class VectorsvcClient:
    """A synchronous client of the vectorsvc gateway API; safe to share between threads.

    `base_url` is the gateway URL, with or without the trailing `/api`. Requests carry
    `X-API-Key` (never a bearer token). Answers 429 (after `Retry-After`), 5xx and
    connection errors are retried `retries` times with exponential backoff and jitter
    (`backoff` seconds doubled per try, at most `max_backoff`); other 4xx never are. Every
    error is a `VectorsvcError`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 300.0,
        max_connections: int = 20,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.base_url = root_url(base_url)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._api_key = api_key
        self._sleep = sleep
        self._retry_lock = threading.Lock()
        self.retry_count = 0  # retries made so far, all threads together
        # The key goes per request, not in the client's default headers: the upload PUT
        # must not carry it (its URL is its own credential).
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": f"vectorsvc-client/{__version__}"},
        )

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VectorsvcClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _retryable(self, status: int) -> bool:
        return status == 429 or (status >= 500 and status not in _NOT_RETRIED_5XX)

    def _backoff_delay(self, attempt: int) -> float:
        # "Equal jitter": at least half the exponential step, so retries do back off, and a
        # random other half, so that many workers hit by the same outage spread out.
        step = min(self.max_backoff, self.backoff * (2.0**attempt))
        return step / 2 + random.uniform(0, step / 2)

    def _request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if auth:
            all_headers["X-API-Key"] = self._api_key
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, url, json=json, content=content, params=params, headers=all_headers
                )
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise VectorsvcConnectionError(
                        f"{method} {url}: {type(exc).__name__}: {exc} "
                        f"(after {attempt + 1} attempts)"
                    ) from exc
                delay = self._backoff_delay(attempt)
                reason = type(exc).__name__
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
                if not self._retryable(response.status_code) or attempt >= self.retries:
                    raise error
                delay = self._backoff_delay(attempt)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is not None:
                    if retry_after > self.max_retry_after:
                        raise error  # the server asks for longer than we are willing to block
                    # At least what the server asked; plus jitter so workers do not return
                    # all at the same instant.
                    delay = retry_after + random.uniform(0, max(self.backoff, 0.1))
                reason = f"{response.status_code} {error.code}"
            attempt += 1
            with self._retry_lock:
                self.retry_count += 1
            logger.warning(
                "%s %s: %s; retry %d/%d in %.2f s",
                method,
                url,
                reason,
                attempt,
                self.retries,
                delay,
            )
            self._sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- runs -------------------------------------------------------------------------------

    def run(
        self,
        model: str,
        mode: str = "execute",
        *,
        scope: str | None = None,
        input: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`POST /api/runs` as is; the answer's JSON object."""
        body: dict[str, Any] = {"model": model, "mode": mode, "input": dict(input)}
        if scope is not None:
            body["scope"] = scope
        if params is not None:
            body["params"] = dict(params)
        if options is not None:
            body["options"] = dict(options)
        answer: dict[str, Any] = self._json("POST", "/api/runs", json=body)
        return answer

    def index(
        self, model: str, scope: str, items: Iterable[TextItem | ImageItem | Mapping[str, Any]]
    ) -> IndexResult:
        """Index items of any kind the model takes (text or image) in one run. Indexing an
        id again replaces it; unchanged items come back counted as `skipped`."""
        answer = self.run(model, "index", scope=scope, input={"items": [dict(i) for i in items]})
        return IndexResult.model_validate({**(answer.get("output") or {}), "run_id": answer["id"]})

    def index_texts(
        self, model: str, scope: str, items: Iterable[TextItem | Mapping[str, Any]]
    ) -> IndexResult:
        """Index texts (`{"id", "text", "metadata"?}`) in one run (at most the server's
        `max_items_per_run`, 1000 by default, and 10 MB of JSON)."""
        batch = [dict(i) for i in items]
        for n, item in enumerate(batch):
            if "id" not in item or "text" not in item:
                raise ValueError(f"items[{n}]: a text item needs 'id' and 'text'")
        return self.index(model, scope, batch)

    def index_images(
        self, model: str, scope: str, items: Iterable[ImageItem | Mapping[str, Any]]
    ) -> IndexResult:
        """Index uploaded images (`{"id", "image": {"media_ref"}, "metadata"?}`) in one run."""
        batch = [dict(i) for i in items]
        for n, item in enumerate(batch):
            if "id" not in item or "image" not in item:
                raise ValueError(f"items[{n}]: an image item needs 'id' and 'image'")
        return self.index(model, scope, batch)

    def search(
        self,
        model: str,
        scope: str,
        text: str | None = None,
        media_ref: str | None = None,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        score_threshold: float | None = None,
        retrieval: str | None = None,
        fusion: str | None = None,
    ) -> list[Hit]:
        """The `top_k` items of `scope` nearest a text or an uploaded image. `retrieval`:
        "hybrid", "dense" or "keyword" (text models; None: the model's default). `fusion`,
        hybrid only: "rrf" or "dbsf" (None: the model's default)."""
        if (text is None) == (media_ref is None):
            raise ValueError("give exactly one of text or media_ref")
        query: dict[str, Any] = (
            {"text": text} if text is not None else {"image": {"media_ref": media_ref}}
        )
        params: dict[str, Any] = {"top_k": top_k}
        if filter:
            params["filter"] = dict(filter)
        if score_threshold is not None:
            params["score_threshold"] = score_threshold
        if retrieval is not None:
            params["retrieval"] = retrieval
        if fusion is not None:
            params["fusion"] = fusion
        answer = self.run(model, "search", scope=scope, input=query, params=params)
        return [Hit.model_validate(h) for h in (answer.get("output") or {}).get("hits", [])]

    def start_background_index(
        self, model: str, scope: str, items: Iterable[TextItem | ImageItem | Mapping[str, Any]]
    ) -> RunStatus:
        """Queue an index run (`options.background`); poll it with `get_run`/`wait_run`."""
        answer = self.run(
            model,
            "index",
            scope=scope,
            input={"items": [dict(i) for i in items]},
            options={"background": True},
        )
        return RunStatus.model_validate(answer)

    def get_run(self, run_id: str) -> RunStatus:
        return RunStatus.model_validate(self._json("GET", f"/api/runs/{quote(run_id, safe='')}"))

    def cancel_run(self, run_id: str) -> RunStatus:
        return RunStatus.model_validate(
            self._json("POST", f"/api/runs/{quote(run_id, safe='')}/cancel")
        )

    def wait_run(
        self, run_id: str, *, poll_interval: float = 1.0, timeout: float | None = None
    ) -> RunStatus:
        """Poll a run until it succeeds, fails or is cancelled (or `timeout` passes:
        `TimeoutError`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.get_run(run_id)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} still {status.status} after {timeout} s")
            self._sleep(poll_interval)

    # -- media ------------------------------------------------------------------------------

    def upload(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        content_type: str | None = None,
        media_type: str = "image",
        filename: str | None = None,
    ) -> UploadedMedia:
        """Upload a file in the three steps (init, PUT, complete); the completed media."""
        if isinstance(path_or_bytes, bytes):
            data = path_or_bytes
            name = filename or "upload"
        else:
            path = Path(path_or_bytes)
            data = path.read_bytes()
            name = filename or path.name
        content_type = content_type or sniff_content_type(data, name)
        ticket = UploadTicket.model_validate(
            self._json(
                "POST",
                "/api/media/upload/init",
                json={
                    "filename": name,
                    "content_type": content_type,
                    "media_type": media_type,
                    "size_bytes": len(data),
                },
            )
        )
        try:
            # No API key: the URL's token is the credential (and may point elsewhere).
            self._request(
                "PUT",
                ticket.upload_url,
                content=data,
                headers={"Content-Type": content_type},
                auth=False,
            )
        except VectorsvcError as exc:
            # A retried PUT whose first try landed but whose answer was lost.
            if exc.code != "upload_already_received":
                raise
        return UploadedMedia.model_validate(
            self._json("POST", "/api/media/upload/complete", json={"upload_id": ticket.upload_id})
        )

    def upload_media(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        content_type: str | None = None,
        media_type: str = "image",
        filename: str | None = None,
    ) -> str:
        """Upload a file; its `media_ref`, for `{"image": {"media_ref": ...}}` in runs."""
        return self.upload(
            path_or_bytes, content_type=content_type, media_type=media_type, filename=filename
        ).media_ref

    # -- marketplace ------------------------------------------------------------------------

    def get_model(self, slug: str) -> ModelDetail:
        """A published model's page: its modalities and every mode's contract."""
        return ModelDetail.model_validate(
            self._json("GET", f"/api/marketplace/models/{quote(slug, safe='')}")
        )

    # -- knowledge bases and billing --------------------------------------------------------

    def list_knowledge_bases(
        self, *, model: str | None = None, scope_prefix: str | None = None
    ) -> list[KnowledgeBase]:
        """All of the workspace's knowledge bases (every page), optionally filtered."""
        out: list[KnowledgeBase] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 500}
            if model:
                params["model"] = model
            if scope_prefix:
                params["scope_prefix"] = scope_prefix
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", "/api/knowledge-bases", params=params)
            out.extend(KnowledgeBase.model_validate(kb) for kb in page.get("data", []))
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def wallet(self) -> Wallet:
        return Wallet.model_validate(self._json("GET", "/api/billing/wallet"))

    def usage_summary(
        self, *, start: str | None = None, end: str | None = None, group_by: str | None = None
    ) -> dict[str, Any]:
        """`GET /api/billing/usage/summary`: runs, items embedded, queries and cost."""
        params = {
            k: v for k, v in (("from", start), ("to", end), ("group_by", group_by)) if v is not None
        }
        summary: dict[str, Any] = self._json("GET", "/api/billing/usage/summary", params=params)
        return summary
