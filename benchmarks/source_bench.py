"""Benchmark: a binance-futures aggTrades monthly zip → canonical parquet, against unzip + polars read_csv.

    .venv/bin/python benchmarks/source_bench.py --rows 50000000 [--interleave] [--via-http] [--workdir DIR]

Writes a seeded synthetic monthly archive (published layout, header row, sorted like real monthly files;
`--interleave` alternates blocks of the month's two halves to force the sort path), then runs, each in a fresh
subprocess so peak RSS is per step:
  baseline: extract the CSV to disk + `pl.read_csv` (eager, all columns);
  source:   `binance.convert_archives` (zip → canonical parquet), or with `--via-http` the whole
            `binance.fetch_month` through a local `ArchiveMirror` (download + sha256 + convert).
Targets: source peak RSS ≤ 1.5 GB and time ≤ 1.5 × baseline.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import polars as pl

MONTH = "2024-01"
SYMBOL = "BTCUSDT"
START_MS = 1_704_067_200_000
MONTH_MS = 31 * 86_400_000
CHUNK_ROWS = 5_000_000


def write_archive(root: Path, rows: int, *, interleave: bool, seed: int = 7) -> Path:
    """Seeded aggTrades monthly zip under `root` in the data.binance.vision layout (+ CHECKSUM)."""
    from aperiodic_pipelines.mirror.archives import write_checksum
    from aperiodic_pipelines.sources.binance import COLUMNS, archive_path

    rng = np.random.default_rng(seed)
    path = root / archive_path(SYMBOL, "aggTrades", MONTH)
    path.parent.mkdir(parents=True, exist_ok=True)
    member = f"{SYMBOL}-aggTrades-{MONTH}.csv"
    # Evenly spaced, sorted times: like a real monthly file (unless interleaved).
    step = MONTH_MS / rows
    order = np.arange(rows)
    if interleave:
        half, block = rows // 2, 1000
        blocks = np.stack([np.arange(0, half, block), np.arange(half, 2 * half, block)], axis=1).ravel()
        order = np.concatenate([np.arange(b, min(b + block, rows)) for b in blocks] + [np.arange(2 * half, rows)])
    # Level 1 only to keep the set-up quick; reading cost barely depends on the level.
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(member, "w", force_zip64=True) as out,
    ):
        out.write((",".join(COLUMNS["aggTrades"]) + "\n").encode())
        price = 42_000.0
        for offset in range(0, rows, CHUNK_ROWS):
            index = order[offset : offset + CHUNK_ROWS]
            n = index.size
            price = price + np.cumsum(rng.integers(-3, 4, n)) * 0.1
            ids = 3_000_000_000 + index
            chunk = pl.DataFrame(
                {
                    "agg_trade_id": ids,
                    "price": np.round(np.maximum(price, 1000.0), 1),
                    "quantity": np.round(rng.exponential(0.05, n) + 0.001, 3),
                    "first_trade_id": ids * 3,
                    "last_trade_id": ids * 3 + rng.integers(0, 3, n),
                    "transact_time": START_MS + (index * step).astype(np.int64),
                    "is_buyer_maker": rng.random(n) < 0.5,
                }
            )  # polars writes booleans as true/false, like Binance
            out.write(chunk.write_csv(include_header=False).encode())
            price = price[-1:]
    write_checksum(path)
    return path


def _child(step: str, args: argparse.Namespace) -> dict:
    """Run one measured step in a fresh interpreter; returns its wall time and peak RSS."""
    command = [sys.executable, __file__, "--child", step, "--workdir", str(args.workdir), "--rows", str(args.rows)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_child(step: str, workdir: Path) -> None:
    from aperiodic_pipelines.sources import binance

    zip_path = workdir / "mirror" / binance.archive_path(SYMBOL, "aggTrades", MONTH)
    out_dir = workdir / f"out-{step}"
    out_dir.mkdir(exist_ok=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    extra: dict = {}
    if step == "baseline":
        with zipfile.ZipFile(zip_path) as archive, archive.open(archive.namelist()[0]) as src:
            csv_path = out_dir / "extracted.csv"
            with open(csv_path, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        frame = pl.read_csv(csv_path)
        extra["rows"] = frame.height
        del frame
        csv_path.unlink()
    elif step == "source":
        stats = binance.convert_archives([zip_path], MONTH, out_dir / "canonical.parquet")
        extra.update(rows=stats.trade_count, duplicates=stats.duplicates_dropped, gaps=stats.id_gaps)
    elif step == "http":
        from aperiodic_pipelines.mirror.http import ArchiveMirror
        from aperiodic_pipelines.sources.config import SourceConfig

        with ArchiveMirror(workdir / "mirror") as mirror:
            config = SourceConfig(binance_url=mirror.url, cache_dir=out_dir / "cache")
            started = time.perf_counter()  # server start-up is not part of the work
            result = binance.fetch_month(
                "perpetual-BTC-USDT:USDT", MONTH, dest=out_dir / "canonical.parquet", config=config
            )
        extra.update(rows=result.trade_count)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "step": step,
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime - cpu_before, 2),
        "peak_rss_mb": _peak_rss_mb(),
        **extra,
    }
    print(json.dumps(result))


def _peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--interleave", action="store_true", help="unsorted halves: measure the sort path")
    parser.add_argument("--via-http", action="store_true", help="also run fetch_month through a local mirror")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each step (best is kept)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run_child(args.child, args.workdir)
        return 0
    with tempfile.TemporaryDirectory(prefix="source-bench-", dir=args.workdir) as tmp:
        args.workdir = Path(tmp)
        started = time.perf_counter()
        zip_path = write_archive(args.workdir / "mirror", args.rows, interleave=args.interleave)
        print(f"archive: {args.rows:,} rows, {zip_path.stat().st_size / 1e6:.0f} MB zip, "
              f"written in {time.perf_counter() - started:.0f}s", flush=True)
        steps = ["baseline", "source"] * args.repeat + (["http"] if args.via_http else [])
        results: dict[str, list[dict]] = {}
        for step in steps:  # alternated, so a noisy neighbour hurts both sides alike
            result = _child(step, args)
            print(json.dumps(result), flush=True)
            results.setdefault(step, []).append(result)
        best = {step: min(runs, key=lambda r: r["seconds"]) for step, runs in results.items()}
        baseline, source = best["baseline"], best["source"]
        ratio = source["seconds"] / baseline["seconds"]
        cpu_ratio = source["cpu_seconds"] / baseline["cpu_seconds"]
        peak = max(r["peak_rss_mb"] for r in results["source"])
        ok = peak <= 1536 and ratio <= 1.5
        print(f"best of {args.repeat}: source {source['seconds']}s vs baseline {baseline['seconds']}s = {ratio:.2f}x "
              f"(CPU {cpu_ratio:.2f}x); source peak RSS {peak} MB -> "
              f"{'within' if ok else 'OUTSIDE'} target (<= 1.5x, <= 1536 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
