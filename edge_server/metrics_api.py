"""``GET /metrics``: the Prometheus text exposition format."""

from __future__ import annotations

from flask import Blueprint, Response

from .context import server

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = server().metrics.render()
    return Response(body, content_type=content_type)


__all__ = ["bp"]
