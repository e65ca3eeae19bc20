"""The one JSON body parser: standard JSON only, for every route of the service.

Python's `json.loads`, which FastAPI and Starlette use, accepts the non-standard tokens
`NaN`, `Infinity` and `-Infinity`; a NaN or an infinity that reaches metadata or a filter
cannot be stored, compared or written back as JSON. Likewise a string escape of a lone UTF-16
surrogate (`"\\ud800"`) parses into a str that no UTF-8 encoder, and so no store, accepts.
Every router is built with `route_class=JSONRoute`, whose requests parse their body with
`loads`, which refuses both: FastAPI then answers a 422 `validation_error` like any other
malformed body.

The parse itself costs the same (the same C scanner; the NaN hook runs only when such a
token is met, the surrogate check only when the text escapes a surrogate), and a route
without a body (every GET) keeps the plain request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

NON_STANDARD_TOKEN = (
    "{token} is not a JSON number (NaN, Infinity and -Infinity are not JSON): send finite "
    "numbers only"
)
TOO_DEEP = "it nests arrays and objects too deeply"
NOT_UNICODE = (
    "it is not valid Unicode text (invalid UTF-8, or a lone UTF-16 surrogate such as \\ud800)"
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(token: str) -> Any:
    # The scanner does not tell where the token was: the message names the token instead.
    raise json.JSONDecodeError(NON_STANDARD_TOKEN.format(token=token), token, 0)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def loads(data: bytes | str) -> Any:
    """`json.loads` for request bodies (`json.JSONDecodeError` on each refusal): no NaN,
    Infinity or -Infinity; text that is valid Unicode (no lone UTF-16 surrogate, which no
    store or encoder downstream accepts); a clear refusal for nesting past Python's
    recursion limit."""
    if isinstance(data, bytes):
        try:
            data = data.decode(json.detect_encoding(data))
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(NOT_UNICODE, "", exc.start) from None
    try:
        value = _DECODER.decode(data)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, data[:100], 0) from None
    # Only an escape of a surrogate (paired, as in an escaped emoji, or lone) can put a
    # lone one in the result: look for it only then. `"\\" in` is a memchr; a search for
    # the two characters `\u` costs half a parse.
    if "\\" in data and _SURROGATE_ESCAPE.search(data) and _holds_lone_surrogate(value):
        raise json.JSONDecodeError(NOT_UNICODE, "", 0)
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


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
