"""Makes ``flowfabric://`` a URL-only migration, with no ``import ff_celery`` in the app.

``ff_celery.pth`` imports the package at interpreter start, which calls :func:`install`;
nothing else is imported then. A one-shot import hook waits for two modules and, once each has
loaded, registers ff_celery with it: kombu's transport table gets the ``flowfabric`` and
``flowfabrics`` schemes, and Celery gets a callback run when any app is finalized (before its
tasks are created), which sets up apps whose broker or backend is ``flowfabric://``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

SCHEMES = ("flowfabric", "flowfabrics")
TRANSPORT = "ff_celery.transport:Transport"


def _register_transport(module: ModuleType) -> None:
    for scheme in SCHEMES:
        module.TRANSPORT_ALIASES.setdefault(scheme, TRANSPORT)


def _on_app_finalize(app: object) -> None:
    from ff_celery.app import integrate_if_used

    integrate_if_used(app)


def _register_finalizer(module: ModuleType) -> None:
    module.connect_on_app_finalize(_on_app_finalize)


class AfterImport:
    """Meta-path finder that runs a callback right after a watched module has executed."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.callbacks = dict(callbacks)

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        callback = self.callbacks.pop(name, None)
        if callback is None:
            return None
        if not self.callbacks:
            sys.meta_path.remove(self)
        spec = _find_without(self, name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            try:
                callback(module)
            except Exception as exc:  # never break the import of kombu or Celery
                print(f"ff_celery: could not register with {name}: {exc!r}", file=sys.stderr)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _find_without(finder: AfterImport, name: str) -> ModuleSpec | None:
    """The spec the other finders give (this one steps aside while they look)."""
    present = finder in sys.meta_path
    if present:
        sys.meta_path.remove(finder)
    try:
        return importlib.util.find_spec(name)
    finally:
        if present:
            sys.meta_path.insert(0, finder)


def install() -> None:
    """Hook kombu and Celery; for modules already imported, register at once."""
    callbacks = {"kombu.transport": _register_transport, "celery._state": _register_finalizer}
    for name in list(callbacks):
        if name in sys.modules:
            callbacks.pop(name)(sys.modules[name])
    if callbacks and not any(isinstance(finder, AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, AfterImport(callbacks))
