"""Tests of ff_celery/engine/core/: the Engine handle, connections, keys, errors, the library, flows."""
