"""The Binance archive's S3 listing, served from a local mirror directory for tests and the demo.

    with ListingServer(root) as listing:
        environ["APERIODIC_BINANCE_LISTING_URL"] = listing.url

answers `GET {url}?delimiter=/&prefix=data/futures/um/monthly/aggTrades/BTCUSDT/` as the bucket
`s3-ap-northeast-1.amazonaws.com/data.binance.vision` does: ListObjects (v1) XML of the files under `root`, with
`CommonPrefixes` for the delimiter, `marker`, `max-keys`, `IsTruncated` and `NextMarker`. The files are read on
every request, so months written after start are listed.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from aperiodic_pipelines.mirror.server import LocalHTTPServer

BUCKET = "data.binance.vision"
DEFAULT_MAX_KEYS = 1000


def listing_xml(root: Path, prefix: str, delimiter: str, marker: str, max_keys: int) -> bytes:
    """A ListBucketResult of the files under `root` (keys are their paths relative to it, with `/`)."""
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    entries: list[tuple[str, bool]] = []  # (key or common prefix, is_prefix), in key order, after the marker
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if common > marker and (not entries or entries[-1] != (common, True)):
                entries.append((common, True))
        elif key > marker:
            entries.append((key, False))
    page, truncated = entries[:max_keys], len(entries) > max_keys
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
        f"<Name>{BUCKET}</Name><Prefix>{escape(prefix)}</Prefix><Marker>{escape(marker)}</Marker>",
        f"<MaxKeys>{max_keys}</MaxKeys><Delimiter>{escape(delimiter)}</Delimiter>",
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
    ]
    if truncated:
        parts.append(f"<NextMarker>{escape(page[-1][0])}</NextMarker>")
    for name, is_prefix in page:
        if is_prefix:
            parts.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
        else:
            size = (root / name).stat().st_size
            parts.append(f"<Contents><Key>{escape(name)}</Key><Size>{size}</Size></Contents>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


class ListingServer(LocalHTTPServer):
    """A `ThreadingHTTPServer` on 127.0.0.1 (port 0) answering S3 bucket listings of `root`."""

    thread_name = "listing"

    def __init__(self, root: Path, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.max_keys = max_keys
        self.requests: list[str] = []  # the prefixes asked for, in order

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}
                prefix = query.get("prefix", "")
                owner.requests.append(prefix)
                try:
                    max_keys = min(int(query.get("max-keys", owner.max_keys)), owner.max_keys)
                except ValueError:
                    max_keys = -1
                if max_keys < 0:
                    body, status = b"<Error><Code>InvalidArgument</Code></Error>", 400
                else:
                    body = listing_xml(owner.root, prefix, query.get("delimiter", ""), query.get("marker", ""),
                                       max_keys)
                    status = 200
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    @property
    def url(self) -> str:
        """The listing's base, as `APERIODIC_BINANCE_LISTING_URL` takes it (the bucket's path on its host)."""
        return f"{self.address}/{BUCKET}"
