"""The engine's work: claiming executions and holding them (claimed task, claimer, lease renewal,
lane shards, one engine and renewer per process), and what a running attempt does besides
finishing (budgets and quota admission, waitpoints and signals, streams). Built on
:mod:`ff_celery.engine.core`; never imports :mod:`ff_celery.engine.duties`.

Import the engine's names from :mod:`ff_celery.engine`; the modules here are its building blocks.
"""

__all__ = ["budgets", "claimed_task", "claimer", "lane_shards", "registry", "renewal", "signals", "streams"]
