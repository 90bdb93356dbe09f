"""The end of the demo: serve the store for a moment and read one published month back with the real client."""

from __future__ import annotations

import calendar
import tempfile
from datetime import date
from pathlib import Path

from aperiodic_pipelines.api.keys import ApiKeyStore
from aperiodic_pipelines.api.server import running_server
from aperiodic_pipelines.api.settings import ApiSettings
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.domain.symbols import resolve_symbol
from aperiodic_pipelines.storage import store_from_uri

HEAD_COLUMNS = ("time", "taker_buy_volume", "taker_sell_volume", "volume_delta_notional", "flow_toxicity_score")


def user_snippet(store_uri: str, exchange: str, symbol: str, interval: str, month: str, base_url: str) -> list[str]:
    """What a user runs to read the same month from their own deployment."""
    year, number = int(month[:4]), int(month[5:])
    last = calendar.monthrange(year, number)[1]
    return [
        "# beside `make dev` (Dagster), in another terminal:",
        f"export APERIODIC_STORE={store_uri}",
        ".venv/bin/aperiodic-pipelines api-keys create me   # prints your key once",
        ".venv/bin/aperiodic-pipelines serve                # " + base_url,
        "# then, in Python:",
        "from datetime import date",
        "from aperiodic import get_metrics",
        "bars = get_metrics(",
        '    "<your key>", metric="flow", timestamp="exchange", interval=' + repr(interval).replace("'", '"') + ",",
        f'    exchange="{exchange}", symbol="{symbol}",',
        f"    start_date=date({year}, {number}, 1), end_date=date({year}, {number}, {last}),",
        f'    base_url="{base_url}",   # or export APERIODIC_API_URL={base_url}',
        ")",
    ]


def read_back_with_client(store_uri: str, exchange: str, symbol: str, interval: str, month: str) -> list[str]:
    """Start `serve` on a free 127.0.0.1 port for a moment, create a key, read `month` with `aperiodic.get_metrics`.

    Returns the lines to print: what was read, the head of the frame, whether it equals the published file,
    and the snippet a user would run. Raises if the client's frame differs from the published file.
    """
    import polars as pl
    from aperiodic import get_metrics

    check_month(month)
    atlas, native = resolve_symbol(exchange, symbol)
    store = store_from_uri(store_uri)
    published = pl.read_parquet(store.read_bytes(flow_key("exchange", exchange, interval, native, month)))
    year, number = int(month[:4]), int(month[5:])
    with tempfile.TemporaryDirectory(prefix="aperiodic-showcase-") as tmp:
        keys_path = Path(tmp) / "api-keys.sqlite"  # a throwaway key database: the demo leaves no key behind
        key = ApiKeyStore(keys_path).create("demo")
        settings = ApiSettings(store_uri=store_uri, api_keys_path=keys_path)
        with running_server(settings) as base_url:
            frame = get_metrics(
                key,
                metric="flow",
                timestamp="exchange",
                interval=interval,
                exchange=exchange,
                symbol=atlas,
                start_date=date(year, number, 1),
                end_date=date(year, number, calendar.monthrange(year, number)[1]),
                base_url=base_url,
                show_progress=False,
            )
    if not frame.equals(published):
        raise AssertionError(f"the client's frame differs from the published {exchange} {native} {interval} {month}")
    with pl.Config(tbl_rows=5, tbl_cols=len(HEAD_COLUMNS), tbl_width_chars=120):
        head = str(frame.select(HEAD_COLUMNS).head(5))
    return [
        f"read back through the API with the aperiodic client: {exchange} {atlas} {interval} {month} "
        f"({frame.height} bars x {frame.width} columns, equal to the published file)",
        *head.splitlines(),
        "",
        "to do the same yourself:",
        *user_snippet(store_uri, exchange, atlas, interval, month, "http://127.0.0.1:8000/api/v1"),
    ]
