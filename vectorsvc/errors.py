"""One error base class, rendered by one handler into one JSON shape.

Every error the service returns looks like
`{"error": {"code": "...", "message": "...", "field": "..."}}` (field when one is at fault).
Each class carries its public `code` and HTTP `status`, so a client can rebuild it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from vectorsvc.observability import request_id_var

logger = logging.getLogger(__name__)


class ErrorBodyPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    message: str
    field: str | None = None
    details: dict[str, Any] | None = None


class ErrorPublic(BaseModel):
    """The one error shape, as the OpenAPI document declares it for every 4xx and 5xx."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorBodyPublic


# Every route answers errors in the one envelope (FastAPI's default 422 schema is not ours).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorPublic, "description": "Client error: see error.code"},
    "5XX": {"model": ErrorPublic, "description": "Server error: see error.code"},
}


class ServiceError(Exception):
    code: str = "internal_error"
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ServiceError):
    code = "bad_request"
    status = 400


class ValidationFailed(ServiceError):
    code = "validation_error"
    status = 422


class Unauthenticated(ServiceError):
    code = "unauthenticated"
    status = 401

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="vectorsvc"'})
        super().__init__(message, **kwargs)


class Forbidden(ServiceError):
    code = "forbidden"
    status = 403


class NotFound(ServiceError):
    code = "not_found"
    status = 404


class Conflict(ServiceError):
    code = "conflict"
    status = 409


class Gone(ServiceError):
    code = "gone"
    status = 410


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    status = 413


class Unavailable(ServiceError):
    code = "unavailable"
    status = 503


def _loc_to_field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _loc_to_field(first.get("loc", ()))
    message = f"{field}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        reason = ctx.get("error") if isinstance(ctx, dict) else None
        message = "request body is not valid JSON" + (f": {reason}" if reason else "")
        field = "body"
    details = {
        "errors": [
            {"field": _loc_to_field(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in errors[:20]
        ]
    }
    body = {"error": {"code": "validation_error", "message": message, "field": field}}
    body["error"]["details"] = details  # type: ignore[assignment]
    return JSONResponse(status_code=422, content=body)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": {"code": code, "message": message}},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # This runs outside the observability middleware: restore the request's id for the
        # log line and the X-Request-ID header, so a 500 can be traced like any answer.
        request_id = request.scope.get("state", {}).get("request_id")
        token = request_id_var.set(request_id) if request_id else None
        try:
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
        finally:
            if token is not None:
                request_id_var.reset(token)
        return JSONResponse(
            status_code=500,
            content={"error": {"code": "internal_error", "message": "internal server error"}},
            headers={"X-Request-ID": request_id} if request_id else None,
        )
