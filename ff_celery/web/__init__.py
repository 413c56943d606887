"""``ff-celery serve``: one ASGI application (Starlette on uvicorn) with the web console for the
people in the loop (lanes, executions, flows, waiting tasks; signal, cancel, revoke and
replay for a signed-in operator, each written to an audit log) and ``/metrics``.

Needs the ``web`` extra: ``pip install 'ff-celery[web]'``.
"""

from ff_celery.web.app import DEFAULT_PORT, WebSettings, create_app, serve
from ff_celery.web.auth import Operators

__all__ = ["DEFAULT_PORT", "Operators", "WebSettings", "create_app", "serve"]
