"""`/api/auth/*`: sign in, refresh, sign out, who am I. Parse, call the service, return.

Sign-in and refresh pass `AuthThrottle` first (per address and per account, in memory,
on the event loop); a sign-in then runs on the throttle's own bounded password-hashing
threads, a refresh on FastAPI's worker threads. The other handlers are plain `def`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Request, Response, status

from vectorsvc.accounts import service
from vectorsvc.accounts.schemas import Me, Refresh, SignIn, TokenPair, UserPublic, WorkspacePublic
from vectorsvc.auth.dependencies import Caller, CurrentCaller
from vectorsvc.auth.throttle import client_address
from vectorsvc.errors import ERROR_RESPONSES, Forbidden
from vectorsvc.json_body import JSONRoute
from vectorsvc.state import StateDep

router = APIRouter(
    prefix="/api/auth", tags=["auth"], responses=ERROR_RESPONSES, route_class=JSONRoute
)


@dataclass(frozen=True)
class SignedIn:
    caller: Caller
    access_token: str


def require_signed_in(
    caller: CurrentCaller, authorization: Annotated[str | None, Header()] = None
) -> SignedIn:
    """A caller authenticated by an access token (API keys have no session to end)."""
    if caller.via != "access_token" or authorization is None:
        raise Forbidden(
            "this endpoint is for signed-in browser sessions (Authorization: Bearer "
            "<access_token>); an API key has no session",
            code="browser_session_required",
        )
    return SignedIn(caller=caller, access_token=authorization.strip().partition(" ")[2].strip())


SignedInDep = Annotated[SignedIn, Depends(require_signed_in)]


def _token_pair(issued: service.IssuedTokens, response: Response) -> TokenPair:
    # Token responses must not be cached by the browser or a proxy (RFC 6749 §5.1).
    response.headers["Cache-Control"] = "no-store"
    return TokenPair(
        access_token=issued.access_token,
        expires_in=issued.expires_in,
        refresh_token=issued.refresh_token,
        user=UserPublic(id=issued.user.id, email=issued.user.email),
        workspace=WorkspacePublic(id=issued.workspace.id, name=issued.workspace.name),
    )


@router.post("/sign-in", response_model=TokenPair, summary="Sign in with email and password")
async def sign_in(body: SignIn, request: Request, state: StateDep, response: Response) -> TokenPair:
    def check_password() -> service.IssuedTokens:
        with state.db.session() as session:
            return service.sign_in(
                session,
                email=body.email,
                password=body.password,
                workspace=body.workspace,
                lifetimes=service.TokenLifetimes.from_settings(state.settings),
            )

    issued = await state.auth_throttle.sign_in(
        address=client_address(request),
        email=service.normalize_email(body.email),
        check=check_password,
    )
    return _token_pair(issued, response)


@router.post("/refresh", response_model=TokenPair, summary="Trade a refresh token for new tokens")
async def refresh(
    body: Refresh, request: Request, state: StateDep, response: Response
) -> TokenPair:
    state.auth_throttle.admit_refresh(client_address(request))
    issued = await anyio.to_thread.run_sync(
        functools.partial(
            service.refresh_session,
            state.db,
            refresh_token=body.refresh_token,
            lifetimes=service.TokenLifetimes.from_settings(state.settings),
            admit_user=state.auth_throttle.admit_refresh_of,
        )
    )
    return _token_pair(issued, response)


@router.post(
    "/sign-out",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this session: its access and refresh tokens stop working",
)
def sign_out(signed_in: SignedInDep, state: StateDep) -> Response:
    with state.db.session() as session:
        service.sign_out(session, access_token=signed_in.access_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=Me, summary="The signed-in user and workspace")
def me(signed_in: SignedInDep, state: StateDep) -> Me:
    caller = signed_in.caller
    with state.db.session() as session:
        user = service.get_user(session, user_id=caller.principal_id)
        return Me(
            user=UserPublic(id=user.id, email=user.email),
            workspace=WorkspacePublic(id=caller.workspace_id, name=caller.workspace_name),
        )
