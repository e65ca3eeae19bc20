"""X-API-Key for servers, Bearer for browser sessions, never a key as a bearer token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from vectorsvc.auth.keys import revoke_api_key
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

RUN = {"model": "all-minilm-l6-v2", "mode": "search", "scope": "s", "input": {"text": "x"}}


async def test_missing_credentials_is_401(service: Service) -> None:
    r = await service.client.post("/api/runs", json=RUN)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "missing_credentials"
    assert "X-API-Key" in error["message"]
    assert "WWW-Authenticate" in r.headers


async def test_invalid_key_is_401(service: Service, api_key: str) -> None:
    wrong = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    for key in (wrong, "vsk_nonsense", "not-a-key"):
        r = await service.client.post("/api/runs", json=RUN, headers={"X-API-Key": key})
        assert r.status_code == 401, key
        assert r.json()["error"]["code"] == "invalid_api_key"


async def test_api_key_as_bearer_is_refused_with_a_pointer(service: Service, api_key: str) -> None:
    r = await service.client.post(
        "/api/runs", json=RUN, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "api_key_as_bearer"
    assert "X-API-Key" in error["message"]
    # Even next to a valid X-API-Key, a key in the bearer slot is refused.
    r = await service.client.post(
        "/api/runs",
        json=RUN,
        headers={"Authorization": f"Bearer {api_key}", "X-API-Key": api_key},
    )
    assert r.json()["error"]["code"] == "api_key_as_bearer"


async def test_unknown_bearer_token_and_wrong_scheme(service: Service) -> None:
    r = await service.client.post(
        "/api/runs", json=RUN, headers={"Authorization": "Bearer some-session-token"}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_access_token"
    r = await service.client.post("/api/runs", json=RUN, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_authorization"


@pytest.mark.parametrize("cache_s", [0.5, 0.0])
async def test_valid_key_works_and_revoked_key_stops(
    tmp_path: Path,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    cache_s: float,
) -> None:
    # A verified key is remembered for api_key_cache_s; a revocation by another process
    # (`vectorsvc keys revoke` writes the database) takes effect within that, or at once
    # with the cache off.
    settings = make_settings(tmp_path / "data", models_dir, api_key_cache_s=cache_s)
    async with running_service(settings, embedder_loader) as service:
        api_key = service.new_key("acme")
        r = await service.run(api_key, RUN)
        assert r.status_code == 200, r.text
        wallet, headers = "/api/billing/wallet", {"X-API-Key": api_key}
        if cache_s:
            # The key is remembered from its verification on: let the run's entry lapse (a
            # run may take longer than the cache), and verify it afresh with a quick request.
            await anyio.sleep(cache_s + 0.1)
            assert (await service.client.get(wallet, headers=headers)).status_code == 200
        with service.db.session() as session:
            revoke_api_key(session, key_id=api_key.removeprefix("vsk_")[:16])
        if cache_s:
            still = await service.client.get(wallet, headers=headers)
            assert still.status_code == 200, still.text  # still remembered
            await anyio.sleep(cache_s + 0.1)
        r = await service.run(api_key, RUN)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


async def test_a_remembered_key_never_lets_a_forged_secret_in(
    service: Service, api_key: str
) -> None:
    # The cache is keyed by the whole presented key: the right key id with a wrong secret
    # is checked against the database and refused, even while the real key is remembered.
    assert (await service.run(api_key, RUN)).status_code == 200
    forged = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    r = await service.run(forged, RUN)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert (await service.run(api_key, RUN)).status_code == 200


async def test_keys_are_stored_hashed(service: Service, api_key: str) -> None:
    from sqlalchemy import select

    from vectorsvc.db.tables import ApiKey

    with service.db.session() as session:
        rows = list(session.scalars(select(ApiKey)))
    assert rows
    secret = api_key.split("_", 2)[2]
    for row in rows:
        assert secret not in row.secret_hash
        assert api_key not in row.secret_hash
    raw = service.stored_bytes()
    assert rows[0].secret_hash.encode() in raw  # what was read holds the key rows
    assert secret.encode() not in raw


async def test_health_is_open_and_nothing_else(service: Service) -> None:
    r = await service.client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["vector_store"] == "edge"
    r = await service.client.post("/api/runs", json=RUN)
    assert r.status_code == 401
