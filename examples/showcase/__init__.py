"""The Celery app behind the showcase examples (approval_gate.py, token_budget_fanout.py,
streaming_progress.py): ``showcase.celery`` is the app, ``showcase.tasks`` its tasks and
``showcase.launch`` starts and stops a real ``celery -A showcase worker`` for a script."""
