"""The e2e tests' Celery app (``ffapp``) plus what the console's browser tests need besides:
a task that fails until the test fixes what it depends on, so a replay of it succeeds."""

from ffapp import app, runs

__all__ = ["app", "fails_until_fixed"]


@app.task(name="consoleapp.fails_until_fixed")
def fails_until_fixed(key):
    """Raise until the test sets ``key``; then answer what the key holds."""
    fixed = runs().get(key)
    if fixed is None:
        raise RuntimeError(f"not fixed yet: {key} is unset")
    return fixed.decode()
