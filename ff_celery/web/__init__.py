"""``ff-celery serve``: one ASGI application (Starlette on uvicorn) with the web console for the
people in the loop (lanes, executions, flows, waiting tasks; signal, cancel, revoke and
replay for a signed-in operator, each written to an audit log), the signal endpoint and
``/metrics``, on a server guarded against hostile clients.

Needs the ``web`` extra: ``pip install 'ff-celery[web]'``.
"""

from ff_celery.web.app import DEFAULT_PORT, WebSettings, create_app
from ff_celery.web.auth import Operators
from ff_celery.web.server import ConnectionLimits, WebServer

__all__ = ["DEFAULT_PORT", "ConnectionLimits", "Operators", "WebServer", "WebSettings", "create_app"]
