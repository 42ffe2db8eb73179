"""A WSGI app that takes ``SLOW_APP_SECONDS`` per request, behind the front's shedding, served by granian:
``python -c 'from support.slow_app import main; main()' PORT SLOTS MAX_WAITING MAX_WAIT_S RETRY_AFTER_S``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgerec.sdk.http_server import HttpSettings, Shedding, build_granian
from edgerec.sdk.wsgi_front import FrontSettings, WSGIFront


def app() -> Any:
    """granian's factory: the slow app behind the admission settings in the environment."""
    seconds = float(os.environ["SLOW_APP_SECONDS"])
    slots, waiting, wait_s, retry = os.environ["SLOW_APP_ADMISSION"].split(",")

    def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        time.sleep(seconds)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return WSGIFront(slow, lambda path: 1024,
                     FrontSettings(int(slots), 0, shedding=Shedding(int(waiting), float(wait_s), int(retry))))


def main() -> None:
    port, admission = int(sys.argv[1]), sys.argv[2]
    os.environ["SLOW_APP_ADMISSION"] = admission
    build_granian("support.slow_app:app", HttpSettings(port=port)).serve()
