"""Tools for development and tests: the embedded server (standalone, one cluster-mode node, or
a small cluster) and the pytest plugin. Only the command line imports them inside the package.

Imports nothing when imported; import the modules by their paths.
"""

__all__ = ["devserver", "pytest_plugin"]
