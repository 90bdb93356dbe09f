"""Delivery API benchmark: listing latency under 10 concurrent clients, and file download throughput.

    .venv/bin/python benchmarks/api_bench.py                      # defaults: 10 clients, 8 s per listing case
    .venv/bin/python benchmarks/api_bench.py --clients 10 --seconds 8 --file-mb 40 --s3

Runs `aperiodic-pipelines serve` as a subprocess on 127.0.0.1 over a fresh local store holding one instrument
with 72 published months (index manifests + small files), plus one ~40 MB parquet (the size of a 1s month).
Cases:
  listing 1 month / 72 months   GET /api/v1/data/flow with a valid key, `--clients` threads, keep-alive
  download                      the 40 MB file: from disk (read), through the API's signed URL, and from a
                                plain static file server (`python -m http.server`) over the same directory,
                                each fetched with curl (median of --rounds)
Clients and server share the machine's cores; the server's CPU seconds are reported beside wall time.
Goals (issue 7): listing p99 < 20 ms; API downloads within 1.5x of the static file server.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aperiodic_pipelines.api import ApiKeyStore  # noqa: E402
from aperiodic_pipelines.api.server import free_port  # noqa: E402
from aperiodic_pipelines.storage import LocalStore  # noqa: E402
from aperiodic_pipelines.storage.index import publish_month_bars  # noqa: E402

EXCHANGE, SYMBOL, NATIVE = "binance-futures", "perpetual-BTC-USDT:USDT", "BTCUSDT"


def months(first_year: int, count: int) -> list[str]:
    return [f"{first_year + i // 12:04d}-{i % 12 + 1:02d}" for i in range(count)]


def publish_store(root: Path, file_mb: int) -> str:
    """72 months (2019-01..2024-12) of a small 1d file each, and one large 1s-sized file for 2024-12."""
    store = LocalStore(root)
    small = pl.DataFrame({"time": pl.datetime_range(pl.datetime(2019, 1, 1), pl.datetime(2019, 1, 31), "1d", eager=True)})
    for month in months(2019, 72):
        publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=month,
                           bars={("exchange", "1d"): small})
    rows = file_mb * 1024 * 1024 // 8  # incompressible float64: the parquet is about `file_mb` MB
    big = pl.DataFrame({"x": np.random.default_rng(0).random(rows)})
    publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month="2024-12",
                       bars={("exchange", "1d"): small, ("exchange", "1s"): big})
    return f"flow/exchange/{EXCHANGE}/1s/{NATIVE}/2024-12.parquet"


def wait_http(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url}")


def listing_case(base: str, key: str, start: str, end: str, clients: int, seconds: float, server: psutil.Process):
    params = {"timestamp": "exchange", "interval": "1d", "exchange": EXCHANGE, "symbol": SYMBOL,
              "start_date": start, "end_date": end}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    files = set()
    stop = time.monotonic() + seconds

    def run(slot: int) -> None:
        with httpx.Client(base_url=base, headers={"X-API-KEY": key}, timeout=30) as client:
            client.get("/data/flow", params=params)  # warm the connection and the index cache
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                answer = client.get("/data/flow", params=params)
                latencies[slot].append(time.perf_counter() - t0)
                if answer.status_code != 200:
                    raise RuntimeError(f"{answer.status_code}: {answer.text}")
                files.add(len(answer.json()["files"]))

    cpu0 = sum(server.cpu_times()[:2])
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = sum(server.cpu_times()[:2]) - cpu0
    every = sorted(x for slot in latencies for x in slot)
    p = lambda q: every[min(len(every) - 1, int(q * len(every)))] * 1000  # noqa: E731
    return {"files": sorted(files), "requests": len(every), "rps": len(every) / wall, "p50": p(0.50),
            "p99": p(0.99), "wall": wall, "server_cpu": cpu}


def download_rate(url: str, rounds: int) -> tuple[float, float]:
    """Median MB/s over `rounds` full GETs with curl (a client that costs little CPU), and the bytes received."""
    rates, size = [], 0
    for _ in range(rounds):
        done = subprocess.run(
            ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url],
            capture_output=True, text=True, check=True,
        )
        size_text, speed = done.stdout.split()
        size = int(size_text)
        rates.append(float(speed) / 1e6)
    return statistics.median(rates), size


def server_latencies(log: Path, offset: int) -> tuple[float, float, int]:
    """p50 and p99 (ms) of the listing requests the server logged after `offset`: time inside the server."""
    with open(log) as fh:
        fh.seek(offset)
        found = sorted(float(m[1]) for m in re.finditer(r"GET /api/v1/data/flow 200 key=bench ([\d.]+)ms", fh.read()))
    if not found:
        return float("nan"), float("nan"), 0
    return found[len(found) // 2], found[min(len(found) - 1, int(0.99 * len(found)))], len(found)


def disk_rate(path: Path, rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            while fh.read(1024 * 1024):
                pass
        rates.append(path.stat().st_size / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def print_listing_table(title: str, base: str, key: str, log: Path, proc: psutil.Process, args) -> None:
    print(f"\nlisting, {title}: latency seen by the clients, and time inside the server (from its access log)")
    print(f"{'range':<11}{'files':>6}{'requests':>9}{'req/s':>7}{'client p50/p99 ms':>20}"
          f"{'server p50/p99 ms':>20}{'server CPU/req':>16}")
    for label, start, end in (("1 month", "2024-03-01", "2024-03-31"), ("72 months", "2019-01-01", "2024-12-31")):
        offset = log.stat().st_size
        r = listing_case(base, key, start, end, args.clients, args.seconds, proc)
        time.sleep(0.5)  # let the server's log catch up
        s50, s99, _n = server_latencies(log, offset)
        print(f"{label:<11}{r['files'][0]:>6}{r['requests']:>9}{r['rps']:>7.0f}"
              f"{r['p50']:>11.1f} / {r['p99']:<6.1f}{s50:>12.2f} / {s99:<6.2f}"
              f"{r['server_cpu'] / r['requests'] * 1000:>10.2f} ms")


def s3_listing(root: Path, key: str, env: dict[str, str], args) -> None:
    """The same listings over an S3 store (a moto server on 127.0.0.1): presigned URLs instead of signed paths."""
    from aperiodic_pipelines.mirror.s3 import FAKE_CREDENTIALS, create_bucket, make_client, start_moto_server
    from aperiodic_pipelines.storage import S3Store

    moto, endpoint = start_moto_server("127.0.0.1")
    try:
        client = make_client(endpoint)
        create_bucket(client, "bench")
        store = S3Store(client, "bench", "bars")
        small = pl.DataFrame({"time": pl.datetime_range(pl.datetime(2019, 1, 1), pl.datetime(2019, 1, 31), "1d",
                                                        eager=True)})
        for month in months(2019, 72):
            publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=month,
                               bars={("exchange", "1d"): small})
        log = root / "serve-s3.log"
        s3_env = {**env, **FAKE_CREDENTIALS, "APERIODIC_STORE": "s3://bench/bars", "AWS_ENDPOINT_URL_S3": endpoint,
                  "AWS_DEFAULT_REGION": "us-east-1"}
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "aperiodic_pipelines.cli", "serve", "--port", str(port)],
                                  env=s3_env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # noqa: SIM115
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", server)
            base = f"http://127.0.0.1:{port}/api/v1"
            params = {"timestamp": "exchange", "interval": "1d", "exchange": EXCHANGE, "symbol": SYMBOL,
                      "start_date": "2019-01-01", "end_date": "2024-12-31"}
            httpx.get(f"{base}/data/flow", params={**params, "end_date": "2019-01-31"}, headers={"X-API-KEY": key})
            t0 = time.perf_counter()
            httpx.get(f"{base}/data/flow", params=params, headers={"X-API-KEY": key}).raise_for_status()
            print(f"\nS3 store: first 72-month listing (72 presigned URLs, index cached) {1000 * (time.perf_counter() - t0):.1f} ms")
            print_listing_table("S3 store (moto), URLs reused", base, key, log, psutil.Process(server.pid), args)
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--file-mb", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--s3", action="store_true", help="also list over an S3 store (a local moto server)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aperiodic-api-bench-") as tmp:
        root = Path(tmp)
        big_key = publish_store(root / "store", args.file_mb)
        key = ApiKeyStore(root / "keys.sqlite").create("bench")
        env = {**os.environ, "PYTHONPATH": str(REPO), "APERIODIC_STORE": str(root / "store"),
               "APERIODIC_API_KEYS": str(root / "keys.sqlite"), "APERIODIC_RATE_LIMIT_PER_SECOND": "1000000",
               "APERIODIC_RATE_LIMIT_BURST": "1000000"}
        port, static_port = free_port(), free_port()
        log = root / "serve.log"
        server = subprocess.Popen([sys.executable, "-m", "aperiodic_pipelines.cli", "serve", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # noqa: SIM115
        static = subprocess.Popen([sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1",
                                   "--directory", str(root / "store")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}/api/v1"
            wait_http(f"http://127.0.0.1:{port}/healthz", server)
            wait_http(f"http://127.0.0.1:{static_port}/", static)
            proc = psutil.Process(server.pid)
            print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
                  f"{args.clients} concurrent clients, {args.seconds:g} s per case")
            print_listing_table("local store", base, key, log, proc, args)
            if args.s3:
                s3_listing(root, key, env, args)
            answer = httpx.get(f"{base}/data/flow", headers={"X-API-KEY": key}, params={
                "timestamp": "exchange", "interval": "1s", "exchange": EXCHANGE, "symbol": SYMBOL,
                "start_date": "2024-12-01", "end_date": "2024-12-31"})
            signed = answer.json()["files"][0]["url"]
            path = root / "store" / big_key
            disk = disk_rate(path, args.rounds)
            api, size = download_rate(signed, args.rounds)
            plain, _ = download_rate(f"http://127.0.0.1:{static_port}/{big_key}", args.rounds)
            print(f"\ndownload of one {size / 1e6:.1f} MB file (median of {args.rounds})")
            print(f"  from disk (read)           {disk:>8.0f} MB/s")
            print(f"  through the API (signed)   {api:>8.0f} MB/s")
            print(f"  python -m http.server      {plain:>8.0f} MB/s")
            print(f"  API / static server        {api / plain:>8.2f}x  (goal: >= 0.67, i.e. within 1.5x)")
        finally:
            for process in (server, static):
                process.terminate()
                process.wait(timeout=10)


if __name__ == "__main__":
    main()
