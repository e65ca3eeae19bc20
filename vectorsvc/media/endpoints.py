"""Media API: upload (init, PUT bytes, complete), metadata and thumbnails.

Every endpoint but the PUT needs the caller's credentials and sees only its workspace's
uploads and media. The PUT is authorised by the unguessable single-use token in its URL,
like a presigned URL, so that a client can hand the URL to another process.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response

from vectorsvc.auth.dependencies import CurrentCaller
from vectorsvc.errors import ERROR_RESPONSES
from vectorsvc.json_body import JSONRoute
from vectorsvc.media.schemas import (
    MediaPublic,
    UploadComplete,
    UploadCompletePublic,
    UploadInit,
    UploadInitPublic,
    UploadReceivedPublic,
)
from vectorsvc.media.service import THUMBNAIL_SIDES
from vectorsvc.state import StateDep

router = APIRouter(
    prefix="/api/media", tags=["media"], responses=ERROR_RESPONSES, route_class=JSONRoute
)


@router.post("/upload/init", response_model=UploadInitPublic, summary="Start a media upload")
def init_upload(
    body: UploadInit, caller: CurrentCaller, state: StateDep, request: Request
) -> UploadInitPublic:
    def upload_url(upload_id: str, token: str) -> str:
        url = request.url_for("put_upload_bytes", upload_id=upload_id)
        return str(url.include_query_params(token=token))

    return state.media.init_upload(
        workspace_id=caller.workspace_id, request=body, upload_url=upload_url
    )


@router.put(
    "/uploads/{upload_id}",
    name="put_upload_bytes",
    response_model=UploadReceivedPublic,
    summary="Upload the bytes (the upload_url from init; no credentials needed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_upload_bytes(
    upload_id: str,
    request: Request,
    state: StateDep,
    token: Annotated[str, Query(description="The single-use token from upload_url")] = "",
    content_length: Annotated[int | None, Header(ge=0)] = None,
) -> UploadReceivedPublic:
    return await state.media.receive_upload(
        upload_id=upload_id,
        token=token,
        body=request.stream(),
        content_length=content_length,
    )


@router.post(
    "/upload/complete",
    response_model=UploadCompletePublic,
    summary="Finish an upload and get its media_ref (idempotent)",
)
def complete_upload(
    body: UploadComplete, caller: CurrentCaller, state: StateDep
) -> UploadCompletePublic:
    return state.media.complete_upload(workspace_id=caller.workspace_id, upload_id=body.upload_id)


@router.get("/{media_ref}", response_model=MediaPublic, summary="Media metadata")
def get_media(media_ref: str, caller: CurrentCaller, state: StateDep) -> MediaPublic:
    return state.media.resolve(workspace_id=caller.workspace_id, media_ref=media_ref).public()


@router.get(
    "/{media_ref}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
    summary="A JPEG thumbnail of an image",
)
async def get_thumbnail(
    media_ref: str,
    caller: CurrentCaller,
    state: StateDep,
    max_side: Annotated[int, Query(ge=THUMBNAIL_SIDES[0], le=THUMBNAIL_SIDES[1])] = 256,
) -> Response:
    media = await anyio.to_thread.run_sync(
        partial(state.media.resolve, workspace_id=caller.workspace_id, media_ref=media_ref)
    )
    data = await anyio.to_thread.run_sync(state.media.thumbnail_bytes, media, max_side)
    # Content-addressed, so the same URL always yields the same bytes for this caller.
    return Response(
        content=data,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{media.sha256}-{max_side}"'},
    )
