"""`GET`/`HEAD /files/{key}`: a published file of a local store, behind a signed URL from a listing.

S3 stores hand out presigned S3 URLs instead; this route then answers 404.
"""

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from aperiodic_pipelines.api.dependencies import Context
from aperiodic_pipelines.api.errors import ApiError
from aperiodic_pipelines.api.models import error_responses
from aperiodic_pipelines.api.safe_files import NotInsideStore, OpenFileResponse, open_inside
from aperiodic_pipelines.storage import LocalStore
from aperiodic_pipelines.storage.publication import SERVABLE_PREFIXES

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"

router = APIRouter()


async def download(key: str, context: Context, expires: str | None = None, signature: str | None = None) -> OpenFileResponse:
    store = context.store
    if context.signer is None or not isinstance(store, LocalStore):
        raise ApiError(404, "not_found", "this deployment's files are served by S3 presigned URLs")
    context.signer.verify(key, expires, signature)
    # Signed by us, so built by us from index entries; checked again before it names a file.
    if not (key.startswith(SERVABLE_PREFIXES) and key.endswith(".parquet")):
        raise ApiError(404, "not_found", "no such published file")
    context.require_store()
    try:
        fd, status = await run_in_threadpool(open_inside, store.root, key)
    except NotInsideStore:
        # Missing, or reached through a symlink (which could point anywhere on this machine): never served.
        raise ApiError(404, "not_found", "the file is no longer published: request a new listing") from None
    remaining = max(int(expires or 0) - int(time.time()), 0)
    return OpenFileResponse(
        fd, status, filename=key.rsplit("/", 1)[-1], media_type=PARQUET_MEDIA_TYPE,
        headers={"Cache-Control": f"private, max-age={remaining}"},
    )


router.add_api_route(
    "/files/{key:path}",
    download,
    methods=["GET"],
    status_code=200,
    responses={200: {"content": {PARQUET_MEDIA_TYPE: {}}}, **error_responses(403, 404, 503)},
    response_class=OpenFileResponse,
    description="A published file behind a signed URL from a listing (local stores; S3 stores presign instead).",
)
# HEAD answers as GET does, without the body (kept out of the OpenAPI document, which documents GET).
router.add_api_route("/files/{key:path}", download, methods=["HEAD"], include_in_schema=False)
