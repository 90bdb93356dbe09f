"""`GET /healthz`: healthy or not, and nothing about where the store is (no path, bucket or endpoint)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aperiodic_pipelines import __version__
from aperiodic_pipelines.api.context import store_unavailable
from aperiodic_pipelines.api.dependencies import Context
from aperiodic_pipelines.api.models import HealthBody, error_responses

router = APIRouter()


@router.get("/healthz", response_model=HealthBody, responses=error_responses(503))
async def healthz(context: Context) -> JSONResponse:
    if not await context.store_reachable():
        raise store_unavailable()
    return JSONResponse({"status": "ok", "version": __version__})
