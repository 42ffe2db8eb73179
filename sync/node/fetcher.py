"""python-tuf's fetcher interface over httpx, with resumable target downloads.

python-tuf verifies length and hashes of everything it fetches; this class
only moves bytes. Target files (large, content-addressed URLs under
consistent snapshots) are downloaded through a partial file: an interrupted
download resumes with an HTTP ``Range`` request on the next try, and the
resumed bytes are still checked by TUF against the signed hash (DESIGN.md:
OTA on poor links).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from edgerec.sdk.http_errors import OVERLOAD_STATUSES, retry_after_seconds
from edgerec.sdk.tracing import client_span

from .client import INSTRUMENTATION

CHUNK = 64 * 1024
log = logging.getLogger("edgerec.sync.node.fetcher")


class RefusedDownloadError(DownloadHTTPError):
    """An overload refusal (503, 429) of a metadata or target request; ``retry_after_s`` as the service said
    (None when absent or unreadable). A ``DownloadHTTPError``, as python-tuf expects of a fetcher."""

    def __init__(self, message: str, status_code: int, retry_after_s: float | None) -> None:
        super().__init__(message, status_code)
        self.retry_after_s = retry_after_s


class HttpxFetcher(FetcherInterface):
    """Fetches with an ``httpx.Client``; resumes URLs under ``/targets/`` via ``partial_dir``."""

    def __init__(self, client: httpx.Client, partial_dir: Path | None = None, rate: float | None = None) -> None:
        self.client = client
        self.partial_dir = partial_dir
        self.rate = rate  # bytes per second for target downloads (a thin link's share); None: no limit
        self.resumed_bytes = 0  # bytes taken from partial files (for tests and logs)
        self.fetched_bytes = 0  # target bytes that came over the network

    def _fetch(self, url: str) -> Iterator[bytes]:
        if self.partial_dir is not None and "/targets/" in url:
            return self._resumable(url, self.partial_dir / hashlib.sha256(url.encode()).hexdigest())
        resp = self._open(url, {})
        return self._chunks(resp, url, None)

    def _open(self, url: str, headers: dict[str, str]) -> httpx.Response:
        # In the cycle's trace too, so the origin's log lines for these files join the node's.
        kind = "targets" if "/targets/" in url else "metadata"
        try:
            with client_span(f"GET TUF {kind}", INSTRUMENTATION) as tp:
                request = self.client.build_request("GET", url, headers={**headers, "traceparent": tp})
                resp = self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise DownloadError(f"{url}: {exc}") from exc
        if resp.status_code in OVERLOAD_STATUSES:
            resp.close()
            raise RefusedDownloadError(f"{url}: HTTP {resp.status_code}", resp.status_code,
                                       retry_after_seconds(resp.headers.get("Retry-After")))
        if resp.status_code >= 400 and resp.status_code != 416:
            resp.close()
            raise DownloadHTTPError(f"{url}: HTTP {resp.status_code}", resp.status_code)
        return resp

    def _chunks(self, resp: httpx.Response, url: str, sink: Path | None) -> Iterator[bytes]:
        start, got = time.monotonic(), 0
        try:
            with open(sink, "ab") if sink else contextlib.nullcontext() as out:
                for chunk in resp.iter_bytes(CHUNK):
                    if out is not None:
                        # Flushed chunk by chunk: a killed daemon resumes from what reached the file
                        # (TUF checks the whole later, so a torn tail costs a retry, not trust).
                        out.write(chunk)
                        out.flush()
                        self.fetched_bytes += len(chunk)
                        got += len(chunk)
                        if self.rate:
                            ahead = got / self.rate - (time.monotonic() - start)
                            if ahead > 0:
                                time.sleep(ahead)
                    yield chunk
        except httpx.HTTPError as exc:
            raise DownloadError(f"{url}: {exc}") from exc
        finally:
            resp.close()

    def _resumable(self, url: str, part: Path) -> Iterator[bytes]:
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        resp = self._open(url, {"Range": f"bytes={have}-"} if have else {})
        if resp.status_code == 416:
            # We already hold every byte (or the partial file is wrong; TUF will tell).
            resp.close()
            return self._complete(part, None, url)
        if resp.status_code != 206:
            # The server sent the whole file: start over.
            part.unlink(missing_ok=True)
            have = 0
        if have:
            log.info("resuming %s at byte %d", url, have)
        self.resumed_bytes += have
        return self._complete(part, resp, url)

    def _complete(self, part: Path, resp: httpx.Response | None, url: str) -> Iterator[bytes]:
        if part.exists():
            with open(part, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk
        if resp is not None:
            yield from self._chunks(resp, url, part)
        # Whole: TUF checks it next; a failed check must not be resumed.
        part.unlink(missing_ok=True)

    def discard_partials(self) -> None:
        """Forget interrupted downloads (after a hash mismatch, say)."""
        if self.partial_dir is not None and self.partial_dir.exists():
            for p in self.partial_dir.iterdir():
                p.unlink(missing_ok=True)
