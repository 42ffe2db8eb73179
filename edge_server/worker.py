"""``python -m edgerec.edge_server.worker``: one worker process of a multi-worker server."""

from __future__ import annotations

from .server import run_worker

if __name__ == "__main__":
    run_worker()
