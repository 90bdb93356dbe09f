"""Small expression helpers shared by the engine's modules."""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from operator import add

import polars as pl


def ordered_sum(*exprs: pl.Expr | Iterable[pl.Expr]) -> pl.Expr:
    """e1 + e2 + … added strictly left to right.

    `pl.sum_horizontal` over many inputs may combine them in a thread-dependent order (seen with polars 2.1:
    repeated runs differed in the last bits), which would break byte-identical output.
    """
    flat = [e for item in exprs for e in ([item] if isinstance(item, pl.Expr) else item)]
    return reduce(add, flat)
