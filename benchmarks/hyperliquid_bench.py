"""Benchmark: Hyperliquid hourly objects parsed once for every coin, against parsing them for each coin.

    .venv/bin/python benchmarks/hyperliquid_bench.py --trades 1200000 --coins 12 [--before-ref 1c4617b] [--workdir DIR]
        [--dagster-base /tmp/perf-base] [--skip-source]

1. Parse throughput, MB/s of decompressed NDJSON (every coin), ours (`parse_ndjson`: msgspec typed decode + polars
   columns) against `polars.read_ndjson` on the same bytes, for each dataset's records as the mirror writes them.
   `read_ndjson` does less work: it leaves a block's `[user, fill]` events as lists of strings and converts nothing.
2. N coins' months, before and after: a month of `--coins` coins is written to a moto S3 server (own process, on
   127.0.0.1) in the real `node_fills_by_block` format; the raw objects are downloaded into the cache first, then
   every coin's month is built with the source as of `--before-ref` (each coin parses every hour) and with this
   tree (the first coin parses every hour for every coin, the others read their rows of the parsed hours).
3. The Dagster path (with `--dagster-base`, a checkout of the tree before `venue_hours`): the coins' `raw_trades`
   steps of the month, each run in its own process as the run launcher does, two at a time (the per-exchange run
   limit of dagster.yaml), raw objects already in the cache. Before: every coin's step prepares the month itself
   (they race to parse the same hours). After: one `hyperliquid_perps/venue_hours` step, then the coins' steps read
   their rows of the parsed hours. Objects parsed are counted in each process.
Wall and CPU seconds are printed side by side (the machine is shared; CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

MONTH = "2025-09"
BUCKET = "hl-mainnet-node-data"
REPO = Path(__file__).resolve().parents[1]


def timed(step: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process, so its CPU time is not counted as ours."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto_server did not start")


def tape(coins: list[str], trades: int) -> pl.DataFrame:
    from aperiodic_pipelines.synthetic import generate_tape

    per_coin = trades // len(coins)
    frames = [
        generate_tape(MONTH, n_trades=per_coin, seed=index, with_arrival=False, start_price=10.0 + index,
                      first_trade_id=1 + index * per_coin).with_columns(coin=pl.lit(coin))
        for index, coin in enumerate(coins)
    ]
    return pl.concat(frames).sort("ts_exchange", "trade_id")


def ndjson_samples(month_tape: pl.DataFrame, client: Any, keys: list[str]) -> dict[str, bytes]:
    """Decompressed NDJSON of each dataset as the mirror writes it: the month's fills-by-block objects, and the same
    trades as node_fills and node_trades records."""
    from aperiodic_pipelines.mirror.s3 import ndjson_lines, read_lines

    blocks = b"".join(line + b"\n" for key in keys for line in read_lines(client, BUCKET, key))
    head = month_tape.head(200_000)
    return {
        "node_fills_by_block": blocks,
        "node_fills": b"".join(line + b"\n" for line in ndjson_lines("node_fills", head, seed=1)),
        "node_trades": b"".join(line + b"\n" for line in ndjson_lines("node_trades", head, seed=1)),
    }


def throughput(samples: dict[str, bytes]) -> None:
    from aperiodic_pipelines.sources.hyperliquid import parse_ndjson

    print("\nparse throughput, decompressed NDJSON, every coin (MB/s by wall time; CPU s in brackets)")
    print(f"{'dataset':<22}{'MB':>8}{'ours':>18}{'polars.read_ndjson':>24}{'rows kept':>11}")
    for dataset, data in samples.items():
        megabytes = len(data) / 1e6
        ours, ours_wall, ours_cpu = timed(lambda d=data, n=dataset: parse_ndjson(d, n))
        try:
            _, polars_wall, polars_cpu = timed(lambda d=data: pl.read_ndjson(io.BytesIO(d)))
            theirs = f"{megabytes / polars_wall:>16.1f} ({polars_cpu:>4.2f}s)"
        except pl.exceptions.ComputeError:  # a line that is a JSON array ([user, fill]) is not supported
            theirs = f"{'cannot read it':>24}"
        print(f"{dataset:<22}{megabytes:>8.1f}{megabytes / ours_wall:>10.1f} ({ours_cpu:>4.2f}s){theirs}"
              f"{ours.height:>11,}")


def load_before(ref: str, workdir: Path) -> Any:
    """The source module as of `ref` (a single file then), imported under another name."""
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:aperiodic_pipelines/sources/hyperliquid.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = workdir / "hyperliquid_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("hyperliquid_before", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def months(module: Any, coins: list[str], cache: Path, out: Path, client: Any) -> tuple[list[int], float, float]:
    from aperiodic_pipelines.sources.config import SourceConfig

    config = SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=cache)
    counts: list[int] = []

    def run() -> None:
        for coin in coins:
            counts.append(module.fetch_month(coin, MONTH, dest=out / coin, config=config, s3_client=client).trade_count)

    _, wall, cpu = timed(run)
    return counts, wall, cpu


# --- the Dagster path: each step in its own process ------------------------------------------------------------

STEP_RUNS_AT_ONCE = 2  # dagster.yaml: at most 2 runs per exchange at once


def run_step(step: str, coin: str) -> None:
    """In a child process (`--step`): one step of the code location's jobs on an ephemeral instance; prints JSON."""
    from dagster import AssetKey, DagsterInstance

    from aperiodic_pipelines.sources import hyperliquid

    parses = 0
    parse = hyperliquid.source.parse_object

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        nonlocal parses
        parses += 1
        return parse(*args, **kwargs)

    hyperliquid.source.parse_object = counting_parse
    from aperiodic_pipelines.defs.definitions import defs
    from aperiodic_pipelines.defs.partitions import flow_partition_key

    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        if step == "venue":
            job = defs.resolve_job_def("hyperliquid_perps_venue_job")
            result = job.execute_in_process(partition_key=f"{MONTH}-01", instance=instance, raise_on_error=False)
        else:
            instance.add_dynamic_partitions("hyperliquid_perps_instruments", [coin])
            job = defs.resolve_job_def("hyperliquid_perps_flow_bars_job")
            result = job.execute_in_process(
                partition_key=str(flow_partition_key("hyperliquid-perps", coin, MONTH)), instance=instance,
                asset_selection=[AssetKey(["hyperliquid_perps", "raw_trades"])], raise_on_error=False,
            )
        report: dict[str, Any] = {"ok": result.success, "parses": parses, "seconds": time.perf_counter() - started}
        if step == "venue" and result.success:
            (event,) = result.get_asset_materialization_events()
            metadata = event.step_materialization_data.materialization.metadata
            report["ndjson_mb"] = metadata["ndjson_bytes_parsed"].value / 1e6
            report["parse_mb_per_s"] = metadata["parse_mb_per_s"].value
        print(json.dumps(report))


def step_processes(tree: Path, steps: list[tuple[str, str]], env: dict[str, str]) -> tuple[list[dict], float, float]:
    """Run the steps as child processes with `tree` on PYTHONPATH, STEP_RUNS_AT_ONCE at a time: their reports,
    wall seconds and the children's CPU seconds."""
    child_env = {**env, "PYTHONPATH": str(tree)}

    def one(step: tuple[str, str]) -> dict:
        done = subprocess.run([sys.executable, __file__, "--step", step[0], "--coin", step[1]], env=child_env,
                              capture_output=True, text=True, cwd=tree)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            raise SystemExit(f"step {step} failed: {done.stderr[-3000:]}")
        return json.loads(lines[-1])

    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    with ThreadPoolExecutor(STEP_RUNS_AT_ONCE) as pool:
        reports = list(pool.map(one, steps))
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not all(r["ok"] for r in reports):
        raise SystemExit(f"a step failed: {reports}")
    return reports, wall, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def dagster_path(base: Path, coins: list[str], raw_cache: Path, workdir: Path, endpoint: str) -> None:
    env = {**os.environ, "APERIODIC_HYPERLIQUID_URL": f"s3://{BUCKET}", "AWS_ENDPOINT_URL_S3": endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "DAGSTER_HOME": str(workdir / "dagster-home")}
    env.pop("APERIODIC_SOURCE", None)
    (workdir / "dagster-home").mkdir(exist_ok=True)
    print(f"\nDagster path: {len(coins)} coins' raw_trades of {MONTH}, one process per step, {STEP_RUNS_AT_ONCE} at a "
          "time, raw objects cached (wall s / CPU s of the processes; objects parsed)")
    outputs = {}
    for label, tree, steps in (
        ("before (each coin's step prepares the month)", base, [("raw", coin) for coin in coins]),
        ("after (venue_hours, then the coins' steps)   ", REPO, [("venue", "")]),
    ):
        cache = workdir / f"cache-dagster-{tree.name}"
        shutil.copytree(raw_cache, cache, ignore=shutil.ignore_patterns("*.parquet", "_prepared"))
        store = workdir / f"store-dagster-{tree.name}"
        step_env = {**env, "APERIODIC_CACHE_DIR": str(cache), "APERIODIC_STORE": str(store)}
        reports, wall, cpu = step_processes(tree, steps, step_env)
        if tree == REPO:  # the venue step first, then the coins
            more, coin_wall, coin_cpu = step_processes(tree, [("raw", coin) for coin in coins], step_env)
            venue = reports[0]
            print(f"  venue_hours alone: {wall:6.1f} / {cpu:6.1f} (step {venue['seconds']:.1f} s: "
                  f"{venue['ndjson_mb']:.0f} MB of NDJSON at {venue['parse_mb_per_s']} MB/s of the step, raw objects cached)")
            reports, wall, cpu = reports + more, wall + coin_wall, cpu + coin_cpu
        parses = sum(r["parses"] for r in reports)
        print(f"  {label}: {wall:7.1f} / {cpu:7.1f}   {parses} objects parsed")
        outputs[tree] = store
    for coin in coins:
        key = Path("raw/trades/hyperliquid-perps") / coin / f"{MONTH}.parquet"
        if not pl.read_parquet(outputs[base] / key).equals(pl.read_parquet(outputs[REPO] / key)):
            raise SystemExit(f"{coin}: raw trades differ between the Dagster paths")
    print("  every coin's raw trades are identical before and after")


def main() -> None:
    if "--step" in sys.argv:  # a child process of `dagster_path`
        step_args = argparse.ArgumentParser()
        step_args.add_argument("--step", choices=["venue", "raw"])
        step_args.add_argument("--coin", default="")
        parsed = step_args.parse_args()
        run_step(parsed.step, parsed.coin)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=600_000, help="trades in the month, all coins")
    parser.add_argument("--coins", type=int, default=12, help="coins in the month; each one's month is built")
    parser.add_argument("--before-ref", default="1c4617b", help="git ref of the source before parse-once")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dagster-base", type=Path, default=None,
                        help="checkout of the tree before venue_hours: time the Dagster path against it")
    parser.add_argument("--skip-source", action="store_true", help="skip the source-level before/after (2.)")
    args = parser.parse_args()

    from aperiodic_pipelines.mirror.s3 import create_bucket, make_client, write_hyperliquid_month
    from aperiodic_pipelines.sources import hyperliquid as after
    from aperiodic_pipelines.sources.config import SourceConfig

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    coins = ["BTC", "ETH", "SOL", "HYPE", "kPEPE", "DOGE", "XRP", "SUI", "AVAX", "LINK", "ARB", "OP", "WIF", "TIA",
             "SEI", "APT"][: args.coins]
    server, endpoint = start_moto()
    try:
        client = make_client(endpoint)
        create_bucket(client, BUCKET)
        month_tape = tape(coins, args.trades)
        keys, wall, _ = timed(lambda: write_hyperliquid_month(client, BUCKET, None, MONTH, month_tape, seed=1))
        sizes = [item["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                 for item in page.get("Contents", [])]
        print(f"month {MONTH}: {month_tape.height:,} trades of {len(coins)} coins in {len(keys)} node_fills_by_block "
              f"objects, {sum(sizes) / 1e6:.1f} MB compressed (written in {wall:.0f} s)")

        throughput(ndjson_samples(month_tape, client, keys[1:49]))

        if args.skip_source:
            raw_cache = workdir / "cache-raw"
            config = SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=raw_cache)
            _, wall, _ = timed(lambda: after.prepare_month(MONTH, config=config, s3_client=client))
            print(f"\nraw objects downloaded into the cache in {wall:.1f} s (not counted below)")
            if args.dagster_base:
                dagster_path(args.dagster_base, coins, raw_cache, workdir, endpoint)
            return
        before = load_before(args.before_ref, workdir)
        raw_cache = workdir / "cache-before"
        _, wall, _ = timed(lambda: months(before, coins[:1], raw_cache, workdir / "warm", client))
        print(f"\nraw objects downloaded into the cache in {wall:.1f} s (not counted below)")
        after_cache = workdir / "cache-after"
        shutil.copytree(raw_cache, after_cache, ignore=shutil.ignore_patterns("*.parquet"))

        print(f"\n{len(coins)} coins' months of {MONTH}, raw objects already cached (wall s / CPU s)")
        old_counts, old_wall, old_cpu = months(before, coins, raw_cache, workdir / "out-before", client)
        print(f"  before ({args.before_ref}, every coin parses every hour): {old_wall:7.1f} / {old_cpu:7.1f}")
        new_counts, new_wall, new_cpu = months(after, coins, after_cache, workdir / "out-after", client)
        print(f"  after (each hour parsed once for every coin):        {new_wall:7.1f} / {new_cpu:7.1f}")
        again_counts, again_wall, again_cpu = months(after, coins, after_cache, workdir / "out-again", client)
        print(f"  after, hours already parsed (a rerun):               {again_wall:7.1f} / {again_cpu:7.1f}")
        fanout_cache = workdir / "cache-fanout"
        shutil.copytree(raw_cache, fanout_cache, ignore=shutil.ignore_patterns("*.parquet"))
        config = SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=fanout_cache)
        fanout, fan_wall, fan_cpu = timed(
            lambda: after.fetch_months(coins, MONTH, dest=workdir / "out-fanout", config=config, s3_client=client)
        )
        print(f"  after, fetch_months (one listing and parse pass):   {fan_wall:7.1f} / {fan_cpu:7.1f}")
        print(f"  speed-up {old_wall / new_wall:.1f}x wall, {old_cpu / new_cpu:.1f}x CPU (fetch_months: "
              f"{old_wall / fan_wall:.1f}x wall, {old_cpu / fan_cpu:.1f}x CPU)")
        if [fanout[coin].trade_count for coin in coins] != new_counts:
            raise SystemExit("fetch_months counts differ")
        if not old_counts == new_counts == again_counts:
            raise SystemExit(f"trade counts differ: before {old_counts}, after {new_counts}, rerun {again_counts}")
        for coin in coins:
            old = pl.read_parquet(workdir / "out-before" / coin / f"{MONTH}.parquet")
            new = pl.read_parquet(workdir / "out-after" / coin / f"{MONTH}.parquet")
            if not old.equals(new):
                raise SystemExit(f"{coin}: before and after differ")
        print(f"  every coin's month is identical before and after ({sum(new_counts):,} trades)")
        if args.dagster_base:
            dagster_path(args.dagster_base, coins, raw_cache, workdir, endpoint)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
