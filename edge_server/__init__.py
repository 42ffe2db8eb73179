"""edgerec edge server: a Flask inference node for verified model packages.

Open Inference Protocol v2 and TF-Serving REST, ``/v1/rank`` and
``/v1/events``, micro-batching, hot swap, A/B variants, a feature cache and
Prometheus metrics. ``create_app`` builds the WSGI app; ``edgerec serve`` runs
it on granian.
"""

from .app import EdgeServer, create_app
from .config import ServerConfig
from .server import RunningServer, serve

__all__ = ["EdgeServer", "RunningServer", "ServerConfig", "create_app", "serve"]
