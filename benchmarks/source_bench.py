"""Benchmark: a binance-futures aggTrades monthly zip served over HTTP → canonical parquet (issue 9 goal 2).

    .venv/bin/python benchmarks/source_bench.py --rows 20000000 [--interleave] [--repeat 2] [--old-ref REF]

Writes a seeded synthetic monthly archive (published layout, header row, CHECKSUM, sorted like real monthly
files; `--interleave` alternates blocks of the month's two halves to force the sort path), serves it from a
local `ArchiveMirror`, then runs, each in a fresh subprocess so peak RSS is per step, alternated:
  floor: what a user writes by hand: GET the zip to disk, `unzip`, `pl.read_csv`, write canonical parquet;
  old:   `binance.fetch_month` of git ref `--old-ref` (default: the commit before streaming; extracts the CSV);
  new:   `binance.fetch_month` of this tree (streams the member through ISA-L inflate, CRC checked).
Each step reports wall time, CPU time (the machine may be shared) and peak RSS (VmHWM).
Targets (issue 9): new ≤ 2× floor in time, peak RSS ≤ 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
REPO = Path(__file__).resolve().parent.parent
OLD_REF = "1c4617b"  # the sources before issue 8/9: the CSV is extracted to disk, stdlib inflate


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
    """Run one measured step in a fresh interpreter; returns its wall time, CPU time and peak RSS."""
    command = [sys.executable, __file__, "--child", step, "--workdir", str(args.workdir), "--rows", str(args.rows)]
    env = dict(os.environ, PYTHONPATH=str(args.workdir / "old" if step == "old" else REPO))
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export_old_tree(ref: str, target: Path) -> None:
    """The package as it was at `ref` (git archive), so `old` runs the old code exactly."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "aperiodic_pipelines"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def _run_child(step: str, workdir: Path) -> None:
    from aperiodic_pipelines.mirror.http import ArchiveMirror
    from aperiodic_pipelines.sources import binance
    from aperiodic_pipelines.sources.config import SourceConfig

    out_dir = workdir / f"out-{step}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    extra: dict = {}
    with ArchiveMirror(workdir / "mirror") as mirror:  # started before the clock: not part of the work
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        if step == "floor":
            extra["rows"] = _by_hand(f"{mirror.url}/{binance.archive_path(SYMBOL, 'aggTrades', MONTH)}", out_dir)
        else:
            config = SourceConfig(binance_url=mirror.url, cache_dir=out_dir / "cache")
            result = binance.fetch_month(
                "perpetual-BTC-USDT:USDT", MONTH, dest=out_dir / "canonical.parquet", config=config
            )
            extra.update(rows=result.trade_count, duplicates=result.duplicates_dropped, gaps=result.id_gaps)
        elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the `unzip` process of the floor
    child_cpu = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    result = {
        "step": step,
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime - cpu_before + child_cpu, 2),
        "peak_rss_mb": _peak_rss_mb(),
        **extra,
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    print(json.dumps(result))


def _by_hand(url: str, out_dir: Path) -> int:
    """The floor: download, `unzip`, `pl.read_csv`, write the canonical columns as parquet."""
    import requests

    zip_path = out_dir / url.rsplit("/", 1)[-1]
    with requests.get(url, stream=True, timeout=60) as response, open(zip_path, "wb") as sink:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            sink.write(chunk)
    subprocess.run(["unzip", "-q", "-o", str(zip_path), "-d", str(out_dir)], check=True)
    frame = pl.read_csv(out_dir / zip_path.name.replace(".zip", ".csv"))
    canonical = frame.select(
        ts_exchange=pl.col("transact_time") * 1000,
        ts_arrival=pl.lit(None, dtype=pl.Int64),
        trade_id=pl.col("agg_trade_id"),
        price=pl.col("price"),
        qty=pl.col("quantity"),
        is_buy=~pl.col("is_buyer_maker"),
    )
    canonical.write_parquet(out_dir / "canonical.parquet", compression="zstd", compression_level=1,
                            row_group_size=1 << 20)
    return canonical.height


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
    parser.add_argument("--old-ref", default=OLD_REF, help="git ref of the code to compare with")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each step (best is kept)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run_child(args.child, args.workdir)
        return 0
    with tempfile.TemporaryDirectory(prefix="source-bench-", dir=args.workdir) as tmp:
        args.workdir = Path(tmp)
        _export_old_tree(args.old_ref, args.workdir / "old")
        started = time.perf_counter()
        zip_path = write_archive(args.workdir / "mirror", args.rows, interleave=args.interleave)
        print(f"archive: {args.rows:,} rows, {zip_path.stat().st_size / 1e6:.0f} MB zip, "
              f"written in {time.perf_counter() - started:.0f}s; old = {args.old_ref}", flush=True)
        results: dict[str, list[dict]] = {}
        for step in ["floor", "old", "new"] * args.repeat:  # alternated: a noisy neighbour hurts all alike
            result = _child(step, args)
            print(json.dumps(result), flush=True)
            results.setdefault(step, []).append(result)
        best = {step: min(runs, key=lambda r: r["seconds"]) for step, runs in results.items()}
        floor = best["floor"]
        for step in ("old", "new"):
            run = best[step]
            peak = max(r["peak_rss_mb"] for r in results[step])
            ratio, cpu_ratio = run["seconds"] / floor["seconds"], run["cpu_seconds"] / floor["cpu_seconds"]
            ok = peak <= 2048 and ratio <= 2.0
            print(f"best of {args.repeat}: {step} {run['seconds']}s (CPU {run['cpu_seconds']}s) vs floor "
                  f"{floor['seconds']}s (CPU {floor['cpu_seconds']}s) = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU; "
                  f"peak RSS {peak} MB (floor {floor['peak_rss_mb']} MB) -> "
                  f"{'within' if ok else 'OUTSIDE'} target (<= 2x, <= 2048 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
