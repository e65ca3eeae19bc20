"""Authentication as named `Annotated` dependencies.

- `X-API-Key: vsk_...` for servers; an API key sent as a bearer token is refused.
- `Authorization: Bearer <access_token>` for signed-in browser sessions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
from fastapi import Depends, Header, Request

from vectorsvc.auth.keys import VerifiedKey, looks_like_api_key, verify_api_key
from vectorsvc.auth.throttle import client_address
from vectorsvc.db.tables import Workspace
from vectorsvc.errors import Unauthenticated
from vectorsvc.state import AppState, get_state


@dataclass(frozen=True)
class Caller:
    workspace_id: str
    workspace_name: str
    via: Literal["api_key", "access_token"]
    principal_id: str  # API key id or user id


async def authenticate(
    request: Request,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Caller:
    """Who is calling, then the per-credential rate limit (429 with Retry-After).

    A key verified lately answers from memory (`ApiKeyCache`); anything else reads the
    database on a worker thread. A 401 counts against the client's address, and becomes
    429 once the address has spent its budget (`vectorsvc.auth.throttle`)."""
    state = get_state(request)
    caller = _cached_key_caller(state, x_api_key) if authorization is None else None
    if caller is None:
        try:
            caller = await anyio.to_thread.run_sync(
                identify_caller, request, x_api_key, authorization
            )
        except Unauthenticated:
            address = client_address(request)
            if state.auth_throttle.failed_auth.blocking:  # counted in the database
                await anyio.to_thread.run_sync(state.auth_throttle.auth_failed, address)
            else:
                state.auth_throttle.auth_failed(address)
            raise
    credential = f"{caller.via}:{caller.principal_id}"
    if state.rate_limiter.blocking:
        await anyio.to_thread.run_sync(state.rate_limiter.check, credential)
    else:
        state.rate_limiter.check(credential)
    return caller


def _cached_key_caller(state: AppState, x_api_key: str | None) -> Caller | None:
    if x_api_key is None:
        return None
    key = state.api_keys.get(x_api_key.strip())
    if key is None:
        return None
    return Caller(
        workspace_id=key.workspace_id,
        workspace_name=key.workspace_name,
        via="api_key",
        principal_id=key.key_id,
    )


def identify_caller(request: Request, x_api_key: str | None, authorization: str | None) -> Caller:
    state: AppState = get_state(request)
    bearer: str | None = None
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "Authorization must be 'Bearer <access_token>'; servers send their API key "
                "as X-API-Key",
                code="invalid_authorization",
                field="Authorization",
            )
        bearer = token.strip()
        if looks_like_api_key(bearer):
            raise Unauthenticated(
                "an API key was sent as a bearer token; send it in the X-API-Key header "
                "(Authorization: Bearer is only for signed-in browser sessions)",
                code="api_key_as_bearer",
                field="Authorization",
            )
    if x_api_key is not None and bearer is not None:
        raise Unauthenticated(
            "send either X-API-Key or Authorization: Bearer, not both",
            code="ambiguous_credentials",
        )
    if x_api_key is not None:
        key = x_api_key.strip()
        if not looks_like_api_key(key) and state.token_verifier.looks_like_access_token(key):
            raise Unauthenticated(
                "an access token was sent as X-API-Key; browser sessions send it as "
                "'Authorization: Bearer <access_token>'",
                code="access_token_as_api_key",
                field="X-API-Key",
            )
        with state.db.session() as session:
            row = verify_api_key(session, key)
            workspace = session.get(Workspace, row.workspace_id) if row else None
            if row is None or workspace is None:
                raise Unauthenticated(
                    "the API key is not valid (unknown, malformed or revoked)",
                    code="invalid_api_key",
                    field="X-API-Key",
                )
            state.api_keys.put(
                key,
                VerifiedKey(
                    key_id=row.id, workspace_id=workspace.id, workspace_name=workspace.name
                ),
            )
            return Caller(
                workspace_id=workspace.id,
                workspace_name=workspace.name,
                via="api_key",
                principal_id=row.id,
            )
    if bearer is not None:
        identity = state.token_verifier.verify(bearer)
        if identity is None:
            raise Unauthenticated(
                "the access token is not valid or has expired; sign in again",
                code="invalid_access_token",
                field="Authorization",
            )
        return Caller(
            workspace_id=identity.workspace_id,
            workspace_name=identity.workspace_name,
            via="access_token",
            principal_id=identity.user_id,
        )
    raise Unauthenticated(
        "missing credentials: send X-API-Key (servers) or Authorization: Bearer "
        "<access_token> (signed-in browser sessions)",
        code="missing_credentials",
    )


CurrentCaller = Annotated[Caller, Depends(authenticate)]
