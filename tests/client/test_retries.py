"""Retry and error behaviour, on a scripted transport: the one place the service is faked,
because a real server cannot be made to answer 429/503 on cue."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from vectorsvc.client import (
    VectorsvcClient,
    VectorsvcConnectionError,
    VectorsvcError,
    parse_retry_after,
    root_url,
)

RUN_OK = {
    "id": "run_1",
    "model": "m",
    "mode": "search",
    "scope": "s",
    "status": "succeeded",
    "output": {"hits": [{"id": "a", "score": 0.5, "text": "x", "metadata": {}}]},
    "usage": {"queries": 1},
}


def envelope(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": {"code": code, "message": f"{code} happened", "field": "scope"}},
        headers=headers,
    )


class Script:
    """Answers requests in order and records them."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **kwargs: float | int) -> VectorsvcClient:
        return VectorsvcClient(
            "http://gw.test/api/",
            "vsk_test",
            transport=httpx.MockTransport(self),
            sleep=self.sleeps.append,
            **kwargs,  # type: ignore[arg-type]
        )


def search(client: VectorsvcClient) -> list[str]:
    return [h.id for h in client.search("m", "s", text="q")]


def test_429_honours_retry_after_then_503_backs_off() -> None:
    script = Script(
        envelope(429, "rate_limited", **{"Retry-After": "2"}),
        envelope(503, "unavailable"),
        httpx.Response(200, json=RUN_OK),
    )
    client = script.client(backoff=0.5)
    assert search(client) == ["a"]
    assert len(script.requests) == 3
    assert 2.0 <= script.sleeps[0] <= 2.5  # Retry-After, plus at most `backoff` of jitter
    assert 0.5 <= script.sleeps[1] <= 1.0  # attempt 1: half to all of backoff * 2
    assert client.retry_count == 2
    for request in script.requests:
        assert str(request.url) == "http://gw.test/api/runs"
        assert request.headers["X-API-Key"] == "vsk_test"
        assert "authorization" not in request.headers  # never a bearer token


def test_backoff_grows_and_gives_up_with_the_last_error() -> None:
    script = Script(*[envelope(502, "bad_gateway") for _ in range(4)])
    client = script.client(retries=3, backoff=1.0, max_backoff=3.0)
    with pytest.raises(VectorsvcError) as caught:
        search(client)
    assert (caught.value.status, caught.value.code) == (502, "bad_gateway")
    assert len(script.requests) == 4
    bounds = [(0.5, 1.0), (1.0, 2.0), (1.5, 3.0)]  # 1, 2, then capped at 3 (equal jitter)
    for delay, (low, high) in zip(script.sleeps, bounds, strict=True):
        assert low <= delay <= high


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 422])
def test_other_4xx_are_never_retried(status: int) -> None:
    script = Script(envelope(status, "nope"))
    with pytest.raises(VectorsvcError) as caught:
        search(script.client())
    assert len(script.requests) == 1 and script.sleeps == []
    error = caught.value
    assert (error.status, error.code, error.message, error.field) == (
        status,
        "nope",
        "nope happened",
        "scope",
    )


def test_connection_errors_are_retried_then_reported() -> None:
    boom = httpx.ConnectError("refused")
    script = Script(boom, httpx.ReadTimeout("slow"), httpx.Response(200, json=RUN_OK))
    assert search(script.client()) == ["a"]
    assert len(script.sleeps) == 2

    script = Script(boom, boom, boom)
    with pytest.raises(VectorsvcConnectionError) as caught:
        search(script.client(retries=2))
    assert caught.value.status == 0 and caught.value.code == "connection_error"


def test_a_retry_after_longer_than_we_wait_is_not_waited_for() -> None:
    script = Script(envelope(429, "rate_limited", **{"Retry-After": "3600"}))
    with pytest.raises(VectorsvcError) as caught:
        search(script.client(max_retry_after=60))
    assert caught.value.status == 429 and script.sleeps == []


def test_a_non_envelope_error_keeps_its_text() -> None:
    script = Script(httpx.Response(501, text="<html>not here</html>"))
    with pytest.raises(VectorsvcError) as caught:
        search(script.client())
    assert (caught.value.status, caught.value.code) == (501, "http_501")  # 501: not retried
    assert "not here" in caught.value.message


def test_upload_put_is_retried_without_the_api_key() -> None:
    init = {
        "upload_id": "studio_upload_1",
        "upload_url": "http://uploads.test/api/media/uploads/studio_upload_1?token=t",
        "expires_at": "2030-01-01T00:00:00Z",
        "max_bytes": 1000,
    }
    done = {"media_ref": "media_1", "sha256": "0" * 64, "size_bytes": 8, "content_type": "x"}
    script = Script(
        httpx.Response(200, json=init),
        envelope(503, "unavailable"),
        # The first PUT landed after all, its answer lost: the retry is told so.
        envelope(409, "upload_already_received"),
        httpx.Response(200, json=done),
    )
    png = b"\x89PNG\r\n\x1a\n"
    assert script.client().upload_media(png) == "media_1"
    init_req, put1, put2, complete = script.requests
    assert json.loads(init_req.content)["content_type"] == "image/png"  # sniffed
    assert json.loads(init_req.content)["size_bytes"] == len(png)
    for put in (put1, put2):
        assert put.method == "PUT" and str(put.url) == init["upload_url"]
        assert "x-api-key" not in put.headers and put.content == png
    assert complete.headers["X-API-Key"] == "vsk_test"


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://h:8080", "http://h:8080"),
        ("http://h:8080/", "http://h:8080"),
        ("http://h:8080/api", "http://h:8080"),
        ("https://gw.example.com/prefix/api/", "https://gw.example.com/prefix"),
    ],
)
def test_base_url_with_or_without_api(given: str, root: str) -> None:
    assert root_url(given) == root


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_search_needs_exactly_one_query() -> None:
    client = Script().client()
    call: Callable[[], object]
    for call in (
        lambda: client.search("m", "s"),
        lambda: client.search("m", "s", text="a", media_ref="b"),
    ):
        with pytest.raises(ValueError):
            call()
