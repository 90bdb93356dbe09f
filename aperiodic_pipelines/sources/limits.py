"""Ceilings every archive reader enforces, so that a hostile archive costs bounded memory and time.

Crossing one is a `CorruptArchiveError` naming the object: permanent (never retried; the cached file is evicted).
The values and why they sit far above real archives: docs/sources.md, "Ceilings".
"""

from __future__ import annotations

from dataclasses import dataclass

from aperiodic_pipelines.domain.errors import CorruptArchiveError


class ArchiveCeilingError(CorruptArchiveError):
    """An archive that crosses a reader's ceiling (a line, a member's size, its decompression ratio)."""


@dataclass(frozen=True)
class ReadLimits:
    """Ceilings of one reader; crossing one is a `CorruptArchiveError` naming the object (docs/sources.md).

    Defaults sit far above real archives: Binance/OKX/Tardis CSV lines are < 200 bytes, CSV deflates ~5–20×,
    Hyperliquid NDJSON ~3–8× under LZ4, a Binance monthly zip inflates to ~10–40 GB."""

    max_line_bytes: int = 1 << 20  # longest unfinished line held in memory
    max_member_bytes: int = 128 << 30  # decompressed bytes of one member / file
    max_ratio: float = 100.0  # decompressed ÷ compressed bytes, checked once past `ratio_grace_bytes`
    ratio_grace_bytes: int = 64 << 20  # small files compress as they like

    def check_growth(self, where: str, produced: int, consumed: int, *, declared: int | None = None) -> None:
        """Raise once `produced` decompressed bytes (from `consumed` compressed ones) cross a ceiling."""
        if declared is not None and produced > declared:
            raise ArchiveCeilingError(
                f"{where}: inflates past the {declared} bytes its archive declares (corrupt or hostile archive)"
            )
        if produced > self.max_member_bytes:
            raise ArchiveCeilingError(
                f"{where}: inflates past {_size(self.max_member_bytes)}, the ceiling of one member"
            )
        if produced > self.ratio_grace_bytes and produced > self.max_ratio * max(consumed, 1):
            raise ArchiveCeilingError(
                f"{where}: decompression ratio above {self.max_ratio:g}:1 ({_size(produced)} from "
                f"{_size(consumed)}): a decompression bomb, not trade data"
            )

    def check_declared(self, where: str, declared: int, compressed: int) -> None:
        """Refuse a member whose declared size already crosses a ceiling (before any byte is inflated)."""
        if declared > self.max_member_bytes:
            raise ArchiveCeilingError(
                f"{where}: declares {_size(declared)} uncompressed, above the ceiling of {_size(self.max_member_bytes)}"
            )
        if declared > self.ratio_grace_bytes and declared > self.max_ratio * max(compressed, 1):
            raise ArchiveCeilingError(
                f"{where}: declares a decompression ratio above {self.max_ratio:g}:1 ({_size(declared)} from "
                f"{_size(compressed)}): a decompression bomb, not trade data"
            )

    def line_too_long(self, where: str, line: int) -> ArchiveCeilingError:
        return ArchiveCeilingError(
            f"{where}: line {line} is longer than {_size(self.max_line_bytes)}, the ceiling of one line "
            "(corrupt or hostile archive)"
        )


# Binance, OKX, Tardis CSV (zip, gzip).
CSV_LIMITS = ReadLimits()
# Hyperliquid's hourly NDJSON (LZ4): a node_fills_by_block line is a whole block (thousands of fills at most, a
# few MB); an hour is ~0.1–1 GB of NDJSON and is parsed in memory, so its ceiling is lower than a CSV's.
NDJSON_LIMITS = ReadLimits(max_line_bytes=64 << 20, max_member_bytes=8 << 30)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{int(n)} bytes"
