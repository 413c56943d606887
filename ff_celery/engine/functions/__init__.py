"""One typed wrapper per FlowFabric function, grouped as the Lua library's modules are.

Import the package (``from ff_celery.engine import functions as fn``); every call class and
result model is available at its top level.
"""

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
