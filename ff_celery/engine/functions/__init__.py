"""One typed wrapper per FlowFabric function, grouped as the Lua library's modules are.

Import the package (``from ff_celery.engine import functions as fn``); every call class and
result model is available at its top level (``__all__`` gathers each module's).
"""

from ff_celery.engine.functions import (
    base,
    budget,
    execution,
    flow,
    hot_path,
    lease,
    quota,
    scheduling,
    signal,
    stream,
    suspension,
    version,
    waitpoint_token,
)
from ff_celery.engine.functions.base import *  # noqa: F403
from ff_celery.engine.functions.budget import *  # noqa: F403
from ff_celery.engine.functions.execution import *  # noqa: F403
from ff_celery.engine.functions.flow import *  # noqa: F403
from ff_celery.engine.functions.hot_path import *  # noqa: F403
from ff_celery.engine.functions.lease import *  # noqa: F403
from ff_celery.engine.functions.quota import *  # noqa: F403
from ff_celery.engine.functions.scheduling import *  # noqa: F403
from ff_celery.engine.functions.signal import *  # noqa: F403
from ff_celery.engine.functions.stream import *  # noqa: F403
from ff_celery.engine.functions.suspension import *  # noqa: F403
from ff_celery.engine.functions.version import *  # noqa: F403
from ff_celery.engine.functions.waitpoint_token import *  # noqa: F403

__all__ = [
    *base.__all__,
    *budget.__all__,
    *execution.__all__,
    *flow.__all__,
    *hot_path.__all__,
    *lease.__all__,
    *quota.__all__,
    *scheduling.__all__,
    *signal.__all__,
    *stream.__all__,
    *suspension.__all__,
    *version.__all__,
    *waitpoint_token.__all__,
]
