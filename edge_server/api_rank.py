"""The recommender endpoints: ``POST /v1/rank`` and ``POST /v1/events``.

Bodies are checked strictly (unknown fields are refused, so a typo such as
``topk`` is an error, not a silently ignored setting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from .context import RequestState, server, state
from .dataplane import Event, RankRequest
from .errors import BadRequestError
from .metrics import EVENT_TYPES
from .wire import JSON, dumps_bytes, json_response, loads_object

if TYPE_CHECKING:
    from .app import EdgeServer

bp = Blueprint("rank", __name__)
RANK_FIELDS = {"model", "version", "experiment", "user", "candidates", "context", "top_k"}
EVENT_FIELDS = {"type", "response_id", "item", "timestamp"}
MAX_ITEM_ID = 256  # characters of an event's item id (as text)


@bp.post("/v1/rank")
def rank() -> Response:
    body, content_type, _ = rank_answer(server(), state(), lambda: request.get_data(cache=False))
    return Response(body, mimetype=content_type)


def rank_answer(srv: EdgeServer, st: RequestState, body: Callable[[], bytes]) -> tuple[bytes, str, None]:
    """(body, content type, no extra headers) of a rank answer; also the fast route's view."""
    req = parse_rank(loads_object(body()), srv.config.max_candidates)
    return dumps_bytes(srv.dataplane.rank(st, req)), JSON, None


@bp.post("/v1/events")
def events() -> Response:
    srv = server()
    doc = loads_object(request.get_data(cache=False))
    parsed = parse_events(doc, srv.config.max_events)
    return json_response(srv.dataplane.record_events(parsed))


def _id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def parse_rank(doc: dict[str, Any], max_candidates: int) -> RankRequest:
    """A RankRequest from a JSON body; errors name the field."""
    unknown = set(doc) - RANK_FIELDS
    if unknown:
        raise BadRequestError(f"unknown field; expected {', '.join(sorted(RANK_FIELDS))}", field=sorted(unknown)[0])
    model, experiment = doc.get("model"), doc.get("experiment")
    for key, value in (("model", model), ("experiment", experiment)):
        if value is not None and not isinstance(value, str):
            raise BadRequestError("expected a string", field=key)
    version = doc.get("version")
    if version is not None:
        if isinstance(version, str) and version.isdigit() and len(version) <= 18:
            version = int(version)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise BadRequestError("expected a version number", field="version")
    user = doc.get("user") or {}
    if not isinstance(user, dict):
        raise BadRequestError("expected an object with id and/or features", field="user")
    extra = set(user) - {"id", "features"}
    if extra:
        raise BadRequestError("unknown field; put features under user.features", field=f"user.{sorted(extra)[0]}")
    user_id, features = user.get("id"), user.get("features") or {}
    if user_id is not None and not _id(user_id):
        raise BadRequestError("expected a string or integer id", field="user.id")
    if not isinstance(features, dict):
        raise BadRequestError("expected an object", field="user.features")
    candidates = doc.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise BadRequestError("expected a non-empty list of item ids or feature objects", field="candidates")
    if len(candidates) > max_candidates:
        raise BadRequestError(f"more than {max_candidates} candidates", field="candidates")
    if not set(map(type, candidates)) <= {str, int, dict}:  # one C-level pass; the loop only names the culprit
        for i, c in enumerate(candidates):
            if not (_id(c) or isinstance(c, dict)):
                raise BadRequestError("expected an item id or an object of features", field=f"candidates[{i}]")
    context = doc.get("context") or {}
    if not isinstance(context, dict):
        raise BadRequestError("expected an object", field="context")
    top_k = doc.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise BadRequestError("expected an integer >= 1", field="top_k")
    return RankRequest(candidates=candidates, model=model, version=version, experiment=experiment,
                       user_id=user_id, user_features=features, context=context, top_k=top_k)


def parse_events(doc: dict[str, Any], max_events: int) -> list[Event]:
    """Events from ``{"events": [...]}`` or one event object."""
    raw = doc.get("events", [doc])
    if "events" in doc and len(doc) > 1:
        raise BadRequestError("unknown field next to events", field=sorted(set(doc) - {"events"})[0])
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("expected a non-empty list of events", field="events")
    if len(raw) > max_events:
        raise BadRequestError(f"more than {max_events} events", field="events")
    out = []
    for i, e in enumerate(raw):
        where = f"events[{i}]"
        if not isinstance(e, dict):
            raise BadRequestError("expected an event object", field=where)
        unknown = set(e) - EVENT_FIELDS
        if unknown:
            raise BadRequestError(f"unknown field; expected {', '.join(sorted(EVENT_FIELDS))}",
                                  field=f"{where}.{sorted(unknown)[0]}")
        kind, rid, item = e.get("type"), e.get("response_id"), e.get("item")
        if kind not in EVENT_TYPES:
            raise BadRequestError(f"expected one of {', '.join(EVENT_TYPES)}", field=f"{where}.type")
        if not isinstance(rid, str):
            raise BadRequestError("expected the response_id of a /v1/rank answer", field=f"{where}.response_id")
        if item is not None and not _id(item):
            raise BadRequestError("expected an item id", field=f"{where}.item")
        if item is not None and len(item if isinstance(item, str) else str(item)) > MAX_ITEM_ID:
            raise BadRequestError(f"an item id is at most {MAX_ITEM_ID} characters", field=f"{where}.item")
        ts = e.get("timestamp")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float | str)):
            raise BadRequestError("expected a number or an RFC 3339 string", field=f"{where}.timestamp")
        out.append(Event(kind, rid, item))
    return out


__all__ = ["bp", "parse_events", "parse_rank", "rank_answer"]
