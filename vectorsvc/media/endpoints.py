"""Media API: upload (init, PUT bytes, complete), metadata, thumbnails, usage and delete.

Every endpoint but the PUT needs the caller's credentials and sees only its workspace's
uploads and media. The PUT is authorised by the unguessable single-use token in its URL,
like a presigned URL, so that a client can hand the URL to another process.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.datastructures import URL

from vectorsvc.auth.dependencies import CurrentCaller
from vectorsvc.errors import ERROR_RESPONSES
from vectorsvc.json_body import JSONRoute
from vectorsvc.media.objects import MediaObject
from vectorsvc.media.references import MediaReference, find_references
from vectorsvc.media.schemas import (
    MediaPublic,
    MediaUsagePublic,
    UploadComplete,
    UploadCompletePublic,
    UploadInit,
    UploadInitPublic,
    UploadReceivedPublic,
)
from vectorsvc.media.thumbnails import MAX_SIDE_RANGE, thumbnail_side
from vectorsvc.state import StateDep

router = APIRouter(
    prefix="/api/media", tags=["media"], responses=ERROR_RESPONSES, route_class=JSONRoute
)


@router.post("/upload/init", response_model=UploadInitPublic, summary="Start a media upload")
def init_upload(
    body: UploadInit, caller: CurrentCaller, state: StateDep, request: Request
) -> UploadInitPublic:
    base = state.settings.public_base_url

    def upload_url(upload_id: str, token: str) -> str:
        if base is None:  # from the request's Host header and scheme (docs/deployment.md)
            url = request.url_for("put_upload_bytes", upload_id=upload_id)
        else:
            path = request.app.url_path_for("put_upload_bytes", upload_id=upload_id)
            url = URL(base + path)
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


@router.get("/usage", response_model=MediaUsagePublic, summary="Media storage against the quota")
def get_usage(caller: CurrentCaller, state: StateDep) -> MediaUsagePublic:
    return state.media.usage(workspace_id=caller.workspace_id)


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
    max_side: Annotated[
        int,
        Query(
            ge=MAX_SIDE_RANGE[0],
            le=MAX_SIDE_RANGE[1],
            description="Rounded up to 64, 128, 256 or 512 (512 at most)",
        ),
    ] = 256,
) -> Response:
    side = thumbnail_side(max_side)
    media = await anyio.to_thread.run_sync(
        partial(state.media.resolve, workspace_id=caller.workspace_id, media_ref=media_ref)
    )
    data = await anyio.to_thread.run_sync(state.media.thumbnail_bytes, media, side)
    # Content-addressed, so the same URL always yields the same bytes for this caller.
    return Response(
        content=data,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{media.sha256}-{side}"'},
    )


@router.delete(
    "/{media_ref}",
    status_code=204,
    response_class=Response,
    summary="Delete media no indexed item uses (409 media_in_use lists those that do)",
)
async def delete_media(media_ref: str, caller: CurrentCaller, state: StateDep) -> Response:
    def references(media: MediaObject) -> list[MediaReference]:
        return find_references(
            state.store, state.registry, workspace_id=media.workspace_id, media_ref=media_ref
        )

    # The workspace's write lock: no index run of it stores a point between the check for
    # points that use the media and the delete.
    async with state.write_locks.get(caller.workspace_id):
        await anyio.to_thread.run_sync(
            partial(
                state.media.delete,
                workspace_id=caller.workspace_id,
                media_ref=media_ref,
                references=references,
            )
        )
    return Response(status_code=204)
