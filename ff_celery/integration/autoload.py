"""Makes ``flowfabric://`` a URL-only migration, with no ``import ff_celery`` in the app.

``ff_celery.pth`` imports the package at interpreter start, which calls :func:`install`;
this module imports nothing then (not even :mod:`typing`), so every program in the
environment pays well under a millisecond. A one-shot import hook waits for two modules and,
once each has loaded, registers ff_celery with it: kombu's transport table gets the
``flowfabric`` and ``flowfabrics`` schemes (names only), and Celery gets a callback run when
any app is finalized (before its tasks are created). The callback reads the app's broker and
backend URLs and only for ``flowfabric://`` imports ff_celery's Celery layer to set the app
up. Any other app gets nothing of ours, and no failure of ours reaches it: it is logged once.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at interpreter start
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from celery import Celery

SCHEMES = ("flowfabric", "flowfabrics")
TRANSPORT = "ff_celery.integration.transport:Transport"

_reported = False


def _report_failure(what: str, exc: BaseException) -> None:
    """Log a failure of the hook, the first one only (the program goes on without ff_celery)."""
    global _reported
    if _reported:
        return
    _reported = True
    import logging

    logging.getLogger(__name__).warning("ff_celery: %s failed, ignored: %r", what, exc)


def uses_flowfabric(app: "Celery") -> bool:
    """Whether the app's broker or result backend is ``flowfabric://`` / ``flowfabrics://``
    (read from its configuration, without importing anything of ours)."""
    urls = (app.conf.broker_url, app.conf.result_backend)
    return any(isinstance(url, str) and url.partition("://")[0] in SCHEMES for url in urls)


def _register_transport(module: "ModuleType") -> None:
    for scheme in SCHEMES:
        module.TRANSPORT_ALIASES.setdefault(scheme, TRANSPORT)


def _on_app_finalize(app: "Celery") -> None:
    try:
        used = uses_flowfabric(app)
    except Exception as exc:  # not ours to break: Celery reports its configuration itself
        _report_failure("reading the broker and backend URLs of a Celery app", exc)
        return
    if used:  # the app runs on FlowFabric: a failure here must stop it
        from ff_celery.integration.app import integrate

        integrate(app)


def _register_finalizer(module: "ModuleType") -> None:
    module.connect_on_app_finalize(_on_app_finalize)


class AfterImport:
    """Meta-path finder that runs a callback right after a watched module has executed."""

    def __init__(self, callbacks: "dict[str, Callable[[ModuleType], None]]") -> None:
        self.callbacks = dict(callbacks)

    def find_spec(
        self, name: str, path: "Sequence[str] | None", target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        callback = self.callbacks.pop(name, None)
        if callback is None:
            return None
        if not self.callbacks:
            sys.meta_path.remove(self)
        spec = self._spec_of_others(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module: "ModuleType") -> None:
            load(module)
            try:
                callback(module)
            except Exception as exc:  # never break the import of kombu or Celery
                _report_failure(f"registering with {name}", exc)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def _spec_of_others(
        self, name: str, path: "Sequence[str] | None", target: "ModuleType | None"
    ) -> "ModuleSpec | None":
        """The spec the other finders give, as the import system would ask them."""
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None:
                spec = find(name, path, target)
                if spec is not None:
                    return spec
        return None


def install() -> None:
    """Hook kombu and Celery; for modules already imported, register at once."""
    callbacks = {"kombu.transport": _register_transport, "celery._state": _register_finalizer}
    for name in list(callbacks):
        if name in sys.modules:
            callbacks.pop(name)(sys.modules[name])
    if callbacks and not any(isinstance(finder, AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, AfterImport(callbacks))
