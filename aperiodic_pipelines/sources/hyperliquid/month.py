"""One coin's month from its rows of the parsed hours: taker side, duplicates, era overlaps, built ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from aperiodic_pipelines.domain.errors import CorruptArchiveError
from aperiodic_pipelines.trades import CANONICAL_COLUMNS, CANONICAL_SCHEMA

MAX_TRADES_PER_MICROSECOND = 1000  # room in a built node_trades id (ts_us * 1000 + k)
_SAME_FILL = ["trade_id", "ts_exchange", "price", "qty", "is_buy"]
_TRADE_MATCH = ["_ms", "price", "qty", "hash64"]  # a node_trades record and a fill of the same trade


class AmbiguousAggressorError(CorruptArchiveError):
    """node_trades output that writes each trade twice, as a buy and as a sell: the taker side is unknowable."""


@dataclass(frozen=True)
class MonthCounts:
    duplicates_dropped: int  # exact repeats of a record within one dataset
    merged_by_tid: int  # a fill read from both node_fills and node_fills_by_block (same tid), kept once
    merged_by_hash: int  # a node_trades record that is also a fill (same time, px, sz, hash), kept once

    @property
    def era_overlap_merged(self) -> int:
        return self.merged_by_tid + self.merged_by_hash


def assemble_month(
    fills: pl.DataFrame, locations: list[str], *, coin: str, start_us: int, end_us: int
) -> tuple[pl.DataFrame, MonthCounts]:
    """Canonical trades of `[start_us, end_us)` from a coin's parsed rows (`_object` indexes `locations`, `_rank`
    orders datasets, newer first to keep)."""

    def where(row: dict) -> str:
        return f"{locations[row['_object']]} line {row['line']}"

    fills = fills.filter((pl.col("ts_exchange") >= start_us) & (pl.col("ts_exchange") < end_us))

    # A trade of the fills eras has a taker fill (crossed) somewhere in the objects read; without one it is unsided.
    orphans = (
        fills.filter(pl.col("trade_id").is_not_null())
        .group_by("trade_id")
        .agg(pl.col("crossed").any().alias("has_taker"), pl.col("_object").min(), pl.col("line").min())
        .filter(~pl.col("has_taker"))
        .sort("trade_id")
    )
    if orphans.height:
        first = orphans.row(0, named=True)
        raise CorruptArchiveError(
            f"{orphans.height} {coin} trade(s) have no taker fill (crossed=true), e.g. tid {first['trade_id']} at "
            f"{where(first)}"
        )
    takers = fills.filter(pl.col("crossed")).sort("ts_exchange", "_rank", "_object", "line")

    _refuse_buy_sell_twins(takers, locations, coin)

    before = takers.height
    takers = takers.unique(
        subset=["_rank", *_SAME_FILL, "hash64", "side_fp"], keep="first", maintain_order=True
    )
    duplicates = before - takers.height

    with_tid = takers.filter(pl.col("trade_id").is_not_null())
    with_tid = with_tid.with_columns(_best=pl.col("_rank").max().over("trade_id"))
    kept, other_era = with_tid.filter(pl.col("_rank") == pl.col("_best")), with_tid.filter(pl.col("_rank") != pl.col("_best"))
    differing = other_era.join(kept, on=_SAME_FILL, how="anti")
    if differing.height:
        first = differing.row(0, named=True)
        raise CorruptArchiveError(
            f"{coin} tid {first['trade_id']} differs between node_fills and node_fills_by_block, e.g. {where(first)}"
        )
    kept = kept.drop("_best")

    trades_era, merged_by_hash = _merge_node_trades(takers.filter(pl.col("trade_id").is_null()), kept, where, coin)
    trades_era = _build_ids(trades_era)

    trades = pl.concat([kept, trades_era.select(kept.columns)])
    conflicting = trades.filter(pl.col("trade_id").is_duplicated())
    if conflicting.height:
        first = conflicting.sort("trade_id", "_object", "line").row(0, named=True)
        raise CorruptArchiveError(f"{coin} trade id {first['trade_id']} has conflicting taker fills, e.g. {where(first)}")
    out = trades.sort("ts_exchange", "trade_id").select(CANONICAL_COLUMNS).cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    return out, MonthCounts(duplicates, other_era.height, merged_by_hash)


def _refuse_buy_sell_twins(takers: pl.DataFrame, locations: list[str], coin: str) -> None:
    """Some node_trades output writes each trade twice, `side: B` and `side: A`, same hash, time, px, sz and
    side_info. Then which side was the aggressor is unknowable: fail rather than emit a buy and a sell."""
    twins = (
        takers.filter(pl.col("side_fp").is_not_null())
        .group_by("ts_exchange", "price", "qty", "hash64", "side_fp")
        .agg(pl.col("is_buy").n_unique().alias("sides"), pl.col("_object").min(), pl.col("line").min())
        .filter(pl.col("sides") == 2)
    )
    if not twins.height:
        return
    per_object = twins.group_by("_object").agg(pl.len().alias("pairs"), pl.col("line").min()).sort("_object")
    listed = ", ".join(
        f"{locations[row['_object']]} ({row['pairs']} pair(s), first at line {row['line']})"
        for row in per_object.head(5).iter_rows(named=True)
    )
    more = f" and {per_object.height - 5} more object(s)" if per_object.height > 5 else ""
    raise AmbiguousAggressorError(
        f"{twins.height} {coin} trade(s) are written twice in node_trades, once with side B and once with side A "
        f"(same hash, time, px, sz and side_info), so the aggressor is unknowable: {listed}{more}"
    )


def _merge_node_trades(
    records: pl.DataFrame, fills: pl.DataFrame, where: Callable[[dict], str], coin: str
) -> tuple[pl.DataFrame, int]:
    """Drop node_trades records that are also fills (the era switch of 2025-05-25): the same trade has the same
    millisecond, price, size and transaction hash in both, and the fill (real tid) is kept. Matched one to one."""
    if not records.height or not fills.height:
        return records, 0
    records = records.with_columns(_ms=pl.col("ts_exchange") // 1000)
    fill_keys = fills.with_columns(_ms=pl.col("ts_exchange") // 1000)
    counts = fill_keys.group_by(*_TRADE_MATCH, "is_buy").agg(pl.len().alias("_fills"))
    sides = fill_keys.select(*_TRADE_MATCH).unique()
    records = records.with_columns(_k=pl.int_range(pl.len()).over(*_TRADE_MATCH, "is_buy"))
    records = records.join(counts, on=[*_TRADE_MATCH, "is_buy"], how="left").with_columns(pl.col("_fills").fill_null(0))
    unmatched = records.filter(pl.col("_fills") == 0).join(sides, on=_TRADE_MATCH, how="semi")
    if unmatched.height:
        first = unmatched.row(0, named=True)
        raise CorruptArchiveError(
            f"a {coin} node_trades record and a fill of the same trade (time, px, sz, hash) disagree on the taker "
            f"side, e.g. {where(first)}"
        )
    matched = records.filter(pl.col("_k") < pl.col("_fills"))
    return records.filter(pl.col("_k") >= pl.col("_fills")).drop("_ms", "_k", "_fills"), matched.height


def _build_ids(records: pl.DataFrame) -> pl.DataFrame:
    """node_trades carries no id: `ts_exchange_us * 1000 + k`, k numbering the trades of one µs in file order."""
    if not records.height:
        return records
    records = records.sort("ts_exchange", "_object", "line")
    k = pl.int_range(pl.len(), dtype=pl.Int64).over("ts_exchange")
    records = records.with_columns(trade_id=pl.col("ts_exchange") * MAX_TRADES_PER_MICROSECOND + k, _k=k)
    if records.get_column("_k").max() >= MAX_TRADES_PER_MICROSECOND:  # type: ignore[operator]
        raise CorruptArchiveError(f"more than {MAX_TRADES_PER_MICROSECOND} trades in one µs; cannot build ids")
    return records.drop("_k")
