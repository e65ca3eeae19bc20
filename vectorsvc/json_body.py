"""The one JSON body parser: standard JSON only, for every route of the service.

Python's `json.loads`, which FastAPI and Starlette use, accepts the non-standard tokens
`NaN`, `Infinity` and `-Infinity`; a NaN or an infinity that reaches metadata or a filter
cannot be stored, compared or written back as JSON. Every router is built with
`route_class=JSONRoute`, whose requests parse their body with a decoder that refuses those
tokens: FastAPI then answers a 422 `validation_error` like any other malformed body.

It costs nothing on the parse itself (the same C scanner; the hook runs only when such a
token is met) and nothing on a route without a body (a GET keeps the plain request).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

NON_STANDARD_TOKEN = (
    "{token} is not a JSON number (NaN, Infinity and -Infinity are not JSON): send finite "
    "numbers only"
)
TOO_DEEP = "it nests arrays and objects too deeply"


def _refuse_constant(token: str) -> Any:
    # The scanner does not tell where the token was: the message names the token instead.
    raise json.JSONDecodeError(NON_STANDARD_TOKEN.format(token=token), token, 0)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def loads(data: bytes | str) -> Any:
    """`json.loads` that refuses NaN, Infinity and -Infinity, and says so when a document
    nests deeper than Python's recursion limit (`json.JSONDecodeError` both)."""
    if isinstance(data, bytes):
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    try:
        return _DECODER.decode(data)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, data[:100], 0) from None


class StandardJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """An `APIRoute` whose body is parsed by `loads` (routes without a body are unchanged)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def standard_json_handler(request: Request) -> Response:
            return await handler(StandardJSONRequest(request.scope, request.receive))

        return standard_json_handler
