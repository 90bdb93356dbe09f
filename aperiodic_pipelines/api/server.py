"""Running the API: `serve` (the `aperiodic-pipelines serve` command) and `running_server` (a thread, for a moment)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from aperiodic_pipelines.api.app import create_app
from aperiodic_pipelines.api.settings import API_PREFIX, ApiSettings


def configure_logging(level: str = "INFO") -> None:
    """Access lines on stderr; uvicorn's own access log is off (it would print query strings, i.e. signatures)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(settings: ApiSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "INFO") -> None:
    """Serve `{host}:{port}{API_PREFIX}` until interrupted."""
    configure_logging(log_level)
    app = create_app(settings)
    logging.getLogger("aperiodic_pipelines.api").info(
        "serving %s on http://%s:%d%s (OpenAPI at %s/openapi.json)", settings.store_uri, host, port, API_PREFIX, API_PREFIX
    )
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level.lower(), server_header=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(settings: ApiSettings, *, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Serve in a background thread on a free port; yields the base URL (`http://host:port/api/v1`)."""
    port = port or free_port(host)
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, access_log=False, log_level="warning", server_header=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"aperiodic-api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}{API_PREFIX}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
