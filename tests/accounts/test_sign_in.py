"""Browser sign-in: email + password -> access and refresh tokens; Bearer only for access
tokens, X-API-Key only for API keys; refresh rotation, reuse detection, sign-out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import select

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from vectorsvc.accounts.service import create_user
from vectorsvc.db.tables import User, UserSession
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace, find_workspace

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"
MODEL = "all-minilm-l6-v2"


def add_user(service: Service, email: str, workspace: str, password: str = PASSWORD) -> None:
    with service.db.session() as session:
        ws = find_workspace(session, name=workspace) or create_workspace(session, name=workspace)
        create_user(session, email=email, password=password, workspace=ws)


async def sign_in(service: Service, email: str, password: str = PASSWORD, **extra: Any) -> Any:
    r = await service.client.post(
        "/api/auth/sign-in", json={"email": email, "password": password, **extra}
    )
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(service: Service, token: str) -> httpx.Response:
    return await service.client.get("/api/auth/me", headers=bearer(token))


async def test_sign_in_returns_an_access_and_a_refresh_token(service: Service) -> None:
    add_user(service, "Ada@Example.com", "acme")
    r = await service.client.post(
        "/api/auth/sign-in", json={"email": " ada@EXAMPLE.com ", "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 15 * 60
    assert body["access_token"].startswith("vsat_")
    assert body["refresh_token"].startswith("vsrt_")
    assert body["user"]["email"] == "ada@example.com"
    assert body["workspace"]["name"] == "acme"

    r = await me(service, body["access_token"])
    assert r.status_code == 200, r.text
    assert r.json() == {"user": body["user"], "workspace": body["workspace"]}


async def test_wrong_password_and_unknown_email_look_the_same(service: Service) -> None:
    add_user(service, "ada@example.com", "acme")
    wrong_password = await service.client.post(
        "/api/auth/sign-in", json={"email": "ada@example.com", "password": "not the password"}
    )
    unknown_email = await service.client.post(
        "/api/auth/sign-in", json={"email": "bob@example.com", "password": PASSWORD}
    )
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert wrong_password.json()["error"]["code"] == "invalid_credentials"


async def test_access_token_works_as_bearer_on_runs_in_its_workspace(
    service: Service, api_key: str
) -> None:
    add_user(service, "ada@example.com", "acme")  # api_key belongs to workspace acme too
    r = await service.run(
        api_key,
        {
            "model": MODEL,
            "mode": "index",
            "scope": "docs",
            "input": {"items": [{"id": "d1", "text": "Qdrant is a vector database"}]},
        },
    )
    assert r.status_code == 200, r.text
    tokens = await sign_in(service, "ada@example.com")
    search = {"model": MODEL, "mode": "search", "scope": "docs", "input": {"text": "vector db"}}
    r = await service.client.post("/api/runs", json=search, headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text
    assert [hit["id"] for hit in r.json()["output"]["hits"]] == ["d1"]

    # A user of another workspace searching the same scope name sees nothing of acme's.
    add_user(service, "eve@example.com", "other")
    other = await sign_in(service, "eve@example.com")
    r = await service.client.post("/api/runs", json=search, headers=bearer(other["access_token"]))
    assert r.status_code == 200, r.text
    assert r.json()["output"]["hits"] == []


async def test_access_token_as_x_api_key_is_refused(service: Service) -> None:
    add_user(service, "ada@example.com", "acme")
    tokens = await sign_in(service, "ada@example.com")
    r = await service.client.get("/api/auth/me", headers={"X-API-Key": tokens["access_token"]})
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "access_token_as_api_key"
    assert "Authorization: Bearer" in error["message"]


async def test_api_key_as_bearer_is_refused_and_keys_have_no_session(
    service: Service, api_key: str
) -> None:
    r = await service.client.get("/api/auth/me", headers=bearer(api_key))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "api_key_as_bearer"
    r = await service.client.get("/api/auth/me", headers={"X-API-Key": api_key})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "browser_session_required"


async def test_sign_out_revokes_access_and_refresh_tokens(service: Service) -> None:
    add_user(service, "ada@example.com", "acme")
    tokens = await sign_in(service, "ada@example.com")
    r = await service.client.post("/api/auth/sign-out", headers=bearer(tokens["access_token"]))
    assert r.status_code == 204, r.text

    r = await me(service, tokens["access_token"])
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_access_token"
    r = await service.client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_refresh_token"


async def test_refresh_rotates_and_reuse_revokes_the_session(service: Service) -> None:
    add_user(service, "ada@example.com", "acme")
    first = await sign_in(service, "ada@example.com")
    r = await service.client.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["workspace"] == first["workspace"]
    assert (await me(service, second["access_token"])).status_code == 200
    # The replaced pair stops working.
    assert (await me(service, first["access_token"])).status_code == 401

    # Someone presents the already-used refresh token: the whole session ends.
    r = await service.client.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "refresh_token_reused"
    assert (await me(service, second["access_token"])).status_code == 401
    r = await service.client.post(
        "/api/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_refresh_token"


@pytest.fixture
async def short_lived_service(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> AsyncIterator[Service]:
    settings = make_settings(tmp_path / "short", models_dir, access_token_ttl_s=1)
    async with running_service(settings, embedder_loader) as svc:
        yield svc


async def test_expired_access_token_is_401_and_refresh_still_works(
    short_lived_service: Service,
) -> None:
    service = short_lived_service
    add_user(service, "ada@example.com", "acme")
    tokens = await sign_in(service, "ada@example.com")
    assert tokens["expires_in"] == 1
    await anyio.sleep(1.2)
    r = await me(service, tokens["access_token"])
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_access_token"
    r = await service.client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert r.status_code == 200, r.text
    assert (await me(service, r.json()["access_token"])).status_code == 200


async def test_workspace_choice_and_non_member(service: Service) -> None:
    add_user(service, "ada@example.com", "acme")
    with service.db.session() as session:
        from vectorsvc.accounts.service import add_membership

        user = session.scalars(select(User)).one()
        add_membership(session, user=user, workspace=create_workspace(session, name="labs"))
        create_workspace(session, name="secret")
    assert (await sign_in(service, "ada@example.com"))["workspace"]["name"] == "acme"
    labs = await sign_in(service, "ada@example.com", workspace="labs")
    assert labs["workspace"]["name"] == "labs"
    r = await service.client.post(
        "/api/auth/sign-in",
        json={"email": "ada@example.com", "password": PASSWORD, "workspace": "secret"},
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "not_a_member"


async def test_passwords_and_tokens_are_stored_hashed(service: Service) -> None:
    add_user(service, "ada@example.com", "acme")
    tokens = await sign_in(service, "ada@example.com")
    with service.db.session() as session:
        user = session.scalars(select(User)).one()
        row = session.scalars(select(UserSession)).one()
    assert user.password_hash.startswith("$argon2")
    assert PASSWORD not in user.password_hash
    assert tokens["access_token"] not in row.access_token_hash
    assert tokens["refresh_token"] not in row.refresh_token_hash
    raw = service.stored_bytes()
    assert user.password_hash.encode() in raw  # the dump holds the rows
    for secret in (PASSWORD, tokens["access_token"], tokens["refresh_token"]):
        assert secret.encode() not in raw


async def test_short_passwords_are_refused(service: Service) -> None:
    from vectorsvc.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as caught:
        add_user(service, "ada@example.com", "acme", password="short")
    assert caught.value.code == "weak_password"
