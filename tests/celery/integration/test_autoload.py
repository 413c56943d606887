"""The import hook that ``ff_celery.pth`` runs in every interpreter of the environment: at
start it imports only itself, and an app not on flowfabric:// gets nothing of ours, even
with a dependency of ours broken. Each check runs in a fresh interpreter, as a user's would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HOOK = ["ff_celery", "ff_celery.integration", "ff_celery.integration.autoload"]


def run_python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter of this environment (so with ``ff_celery.pth``);
    answers the JSON object it printed last, and its stderr as ``"stderr"``."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


def test_interpreter_start_imports_only_the_hook():
    seen = run_python(
        """
        import json, sys
        heavy = ["typing", "importlib.util", "logging", "kombu", "celery", "redis", "pydantic"]
        ours = sorted(name for name in sys.modules if name.startswith("ff_celery"))
        print(json.dumps({"ours": ours, "heavy": [name for name in heavy if name in sys.modules]}))
        """
    )
    assert seen["ours"] == HOOK
    assert seen["heavy"] == []


def test_finalizing_a_redis_app_imports_nothing_of_ours():
    seen = run_python(
        """
        import json, sys
        from celery import Celery

        app = Celery("plain", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")

        @app.task
        def add(x, y):
            return x + y

        app.finalize()
        app.connection_for_write().transport  # kombu resolves the redis transport
        after_redis = sorted(name for name in sys.modules if name.startswith("ff_celery"))

        # the hook is live: the same interpreter sets up a flowfabric:// app when it is finalized
        ours = Celery("ours", broker="flowfabric://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")
        ours.finalize()
        print(json.dumps({"after_redis": after_redis, "result": add.apply((2, 3)).get(),
                          "ours_set_up": "ff_celery.integration.worker:Deliveries" in ours.steps["consumer"]}))
        """
    )
    assert seen["after_redis"] == HOOK
    assert seen["result"] == 5
    assert seen["ours_set_up"] is True


def test_a_broken_dependency_of_ours_does_not_break_a_redis_app():
    seen = run_python(
        """
        import json, sys
        sys.modules["pydantic"] = None  # `import pydantic` now fails, as if it were not installed
        from celery import Celery

        app = Celery("plain", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")

        @app.task
        def add(x, y):
            return x + y

        app.finalize()
        result = add.apply((2, 3)).get()
        ours = Celery("ours", broker="flowfabric://127.0.0.1:1/0")
        try:  # an app on flowfabric:// cannot run without it: that failure is visible
            ours.finalize()
            ours_failure = None
        except ImportError as exc:
            ours_failure = exc.name
        print(json.dumps({"result": result, "ours_failure": ours_failure}))
        """
    )
    assert seen["result"] == 5
    assert seen["ours_failure"] == "pydantic"
    assert "ff_celery" not in seen["stderr"]
