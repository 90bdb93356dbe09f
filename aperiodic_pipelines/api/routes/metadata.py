"""`GET /metadata/symbols` (the client's `get_symbols`) and `GET /metadata/coverage` (ours)."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aperiodic_pipelines.api.dependencies import Context, ExchangeParam, InstrumentParam
from aperiodic_pipelines.api.listing import published_files
from aperiodic_pipelines.api.models import CoverageBody, SymbolsBody, error_responses
from aperiodic_pipelines.api.params import METRICS
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.storage.index import complete_through

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
    description="Per timestamp variant and interval: the months published (row counts, sizes, sha256), the "
    "open month's published days, and `complete_through`, the last day whose bars are published.",
)
async def coverage(instrument: InstrumentParam, context: Context) -> JSONResponse:
    entries = sorted((await context.months(instrument.exchange, instrument.native_symbol)).items())
    months: dict[tuple[str, str], list[dict[str, Any]]] = {}
    days: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for month, entry in entries:
        # The listing's rule (api.listing): a variant's monthly file, else its days, never both.
        for variant in sorted({(f.timestamp, f.interval) for f in entry.files}):
            listed = published_files([entry], *variant)
            by_key = {f.key: f for f in entry.files if (f.timestamp, f.interval) == variant}
            if month in listed.months:
                f = by_key[listed.months[month]]
                months.setdefault(variant, []).append({"month": month, "rows": f.rows, "size": f.size,
                                                       "sha256": f.sha256})
                continue
            for day, key in sorted(listed.days.items()):
                f = by_key[key]
                days.setdefault(variant, []).append({"day": day, "rows": f.rows, "size": f.size, "sha256": f.sha256})
    order = {name: i for i, name in enumerate(INTERVALS)}
    published = [entry for _, entry in entries]
    return JSONResponse(
        {
            "exchange": instrument.exchange,
            "symbol": instrument.symbol,
            "native_symbol": instrument.native_symbol,
            "variants": [
                {
                    "timestamp": t, "interval": i, "months": months.get((t, i), []),
                    "days": days.get((t, i), []),
                    "complete_through": complete_through(published, t, i),
                }
                for t, i in sorted({*months, *days}, key=lambda ti: (ti[0], order[ti[1]]))
            ],
        }
    )
