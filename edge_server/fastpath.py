"""The scoring routes without Flask's request and response objects, and the error answers.

``POST /v2/models/<name>[/versions/<version>]/infer`` and ``POST /v1/rank``
carry nearly all the traffic, and for a small model Flask's per-request
machinery (request context, URL adapter, dispatch, ``Response``) cost about
as much as the scoring itself. :class:`FastRoutes` answers exactly these two
routes straight from the WSGI environ, through the same view code as the
Flask views (:func:`.api_v2.infer_answer`, :func:`.api_rank.rank_answer`), and
with the same error answers (:func:`error_parts` serves both). Whatever it is
not sure of (another method or path, a path Flask would rewrite, no or an
oversized ``Content-Length``) it leaves to Flask untouched, so Flask's answer
stays the reference; Flask keeps every other route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.http_errors import RequestRefusedError, bounded, http_status_error

from . import api_rank, api_v2
from .context import RequestState
from .errors import UnauthorizedError, classify
from .wire import JSON, dumps

if TYPE_CHECKING:
    from .app import EdgeServer

log = logging.getLogger("edgerec.edge_server")
INFER_ENDPOINT, RANK_ENDPOINT = "v2.infer", "rank.rank"  # Flask's endpoint names for the same views
_PREFIX, _SUFFIX = "/v2/models/", "/infer"
Answer = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, body


def status_line(code: int) -> str:
    """The status line werkzeug writes for ``code`` (e.g. ``400 BAD REQUEST``)."""
    return f"{code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}"


def error_parts(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """(status, body, extra headers) of the answer to ``exc``; logs it as the server does.

    The one place errors become ``{"error", "detail", "field"}``: Flask's error
    handlers and the fast routes both call it (the caller counts the error).
    """
    headers: dict[str, str] | None = None
    if isinstance(exc, HTTPException) and not isinstance(exc, EdgeRecError):
        err = http_status_error(exc.code or 400, exc.name, exc.description)
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type", "content-length")}
    else:
        err = classify(exc)
        if not isinstance(exc, EdgeRecError):
            log.error("unexpected error", exc_info=exc)
        elif err.status >= 500:
            log.error("%s: %s", err.code, bounded(str(exc)))
        else:
            log.info("refused (%s): %s", err.code, bounded(str(exc)))
        if isinstance(exc, UnauthorizedError):
            headers = {"WWW-Authenticate": 'Bearer realm="edgerec"'}
        elif isinstance(exc, RequestRefusedError) and exc.retry_after_s is not None:
            headers = {"Retry-After": str(exc.retry_after_s)}
    status, doc = err.status, err.document()
    return status, doc, headers


class FastRoutes:
    """Answers the scoring routes from the environ; ``None`` hands a request to Flask."""

    def __init__(self, srv: EdgeServer) -> None:
        self.srv = srv
        self.max_body = srv.config.max_body_bytes

    def __call__(self, environ: dict[str, Any], st: RequestState) -> Answer | None:
        if environ.get("REQUEST_METHOD") != "POST":
            return None
        path: str = environ.get("PATH_INFO", "")
        length: str = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or int(length) > self.max_body:
            return None  # chunked, missing or too large: Flask reads (or refuses) it
        n = int(length)
        if path == "/v1/rank":
            st.endpoint = RANK_ENDPOINT
            return self._answer(st, lambda: api_rank.rank_answer(self.srv, st, _reader(environ, n)))
        if path.startswith(_PREFIX) and path.endswith(_SUFFIX) and path.isascii():
            parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
            if len(parts) == 1 and parts[0]:
                name, version = parts[0], None
            elif len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                name, version = parts[0], parts[2]
            else:
                return None  # empty segments: Flask redirects or answers 404
            st.endpoint = INFER_ENDPOINT
            header_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
            return self._answer(st, lambda: api_v2.infer_answer(self.srv, st, name, version, _reader(environ, n),
                                                                header_length))
        return None

    def _answer(self, st: RequestState, view: Callable[[], tuple[bytes, str, dict[str, str] | None]]) -> Answer:
        try:
            body, content_type, extra = view()
        except Exception as exc:
            status, doc, extra = error_parts(exc)
            self.srv.metrics.error(st.endpoint, doc["error"])
            body, content_type, line = dumps(doc).encode(), JSON, status_line(status)
        else:
            line = "200 OK"
        headers = [*extra.items()] if extra else []
        headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        return line, headers, body


def _reader(environ: dict[str, Any], n: int) -> Callable[[], bytes]:
    def read() -> bytes:
        body: bytes = environ["wsgi.input"].read(n) if n else b""
        if len(body) != n:
            raise ClientDisconnected()  # what werkzeug's limited stream raises
        return body

    return read


__all__ = ["INFER_ENDPOINT", "RANK_ENDPOINT", "FastRoutes", "error_parts", "status_line"]
