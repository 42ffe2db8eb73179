"""The edge server's access line: the request's model, version and variant with the common fields.

Formatting, batching and the direct path past the logging machinery are
:mod:`edgerec.sdk.json_logs`, shared with the sync service and the node daemon.
"""

from __future__ import annotations

from edgerec.sdk import json_logs

from .context import RequestState


class AccessLog(json_logs.AccessLog):
    """One ``edgerec.access`` record per request, labelled as the views labelled the request."""

    def write(self, method: str, path: str, code: int, st: RequestState, seconds: float) -> None:
        """Log ``METHOD PATH CODE`` with the request's fields (the caller checked :meth:`enabled`)."""
        self.log(method, path, code, {
            "request_id": st.request_id, "trace_id": st.trace.trace_id, "span_id": st.trace.span_id,
            "endpoint": st.endpoint, "status": code, "duration_ms": json_logs.duration_ms(seconds),
            "model": st.model or None, "version": st.version or None, "variant": st.variant or None,
        })


__all__ = ["AccessLog"]
