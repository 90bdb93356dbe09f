"""`GET /metadata/symbols` (the client's `get_symbols`) and `GET /metadata/coverage` (ours)."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aperiodic_pipelines.api.dependencies import Context, ExchangeParam, InstrumentParam
from aperiodic_pipelines.api.models import CoverageBody, SymbolsBody, error_responses
from aperiodic_pipelines.api.params import METRICS
from aperiodic_pipelines.domain.intervals import INTERVALS

router = APIRouter(prefix="/metadata")


@router.get(
    "/symbols",
    response_model=SymbolsBody,
    responses=error_responses(400, 401, 403, 429, 503),
    description="Atlas symbols of the exchange with at least one published file.",
)
async def symbols(exchange: ExchangeParam, context: Context) -> JSONResponse:
    found = await context.symbols(exchange)
    return JSONResponse({"symbols": found, "exchange": exchange, "bucket": METRICS[0]})


@router.get(
    "/coverage",
    response_model=CoverageBody,
    responses=error_responses(400, 401, 403, 429, 503),
    description="Months published per timestamp variant and interval, with row counts, sizes and sha256.",
)
async def coverage(instrument: InstrumentParam, context: Context) -> JSONResponse:
    variants: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for month, entry in sorted((await context.months(instrument.exchange, instrument.native_symbol)).items()):
        for f in entry.files:
            if not f.key.endswith(f"/{month}.parquet"):
                continue  # a daily file: coverage counts whole months
            variants.setdefault((f.timestamp, f.interval), []).append(
                {"month": month, "rows": f.rows, "size": f.size, "sha256": f.sha256}
            )
    order = {name: i for i, name in enumerate(INTERVALS)}
    return JSONResponse(
        {
            "exchange": instrument.exchange,
            "symbol": instrument.symbol,
            "native_symbol": instrument.native_symbol,
            "variants": [
                {"timestamp": t, "interval": i, "months": months}
                for (t, i), months in sorted(variants.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))
            ],
        }
    )
