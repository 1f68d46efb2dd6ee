"""Node's AsyncLocalStorage for Python: a request's context across await, tasks and threads.

``AsyncLocalStorage.run(store, fn)`` makes ``store`` what ``get_store()``
returns anywhere below ``fn``: across ``await`` and asyncio/trio tasks (which
``contextvars`` already follows) and across thread hops (which it does not)
made through the wrappers here (executors, threads, timers and
``run_in_executor``) or, after ``patch()``, through the standard library's
own. Every hop runs in a fresh copy of the context current at the hand-off;
nothing a hop sets leaks back or across pooled tasks. Storages made with
``carry=True`` also cross into other processes, by value (``capture``,
``run_captured``, process pools, ``als.celery``).
"""

from ._asyncio import install_default_executor, run_in_executor
from ._carry import capture, run_captured
from ._context import Snapshot, bind, snapshot
from ._executors import ContextFuture, ContextThreadPoolExecutor, wrap_executor
from ._patch import is_patched, patch, patched, unpatch
from ._storage import AsyncLocalStorage, Scope
from ._threads import ContextThread, ContextTimer

__version__ = "0.2.0"

__all__ = [
    "AsyncLocalStorage",
    "ContextFuture",
    "ContextThread",
    "ContextThreadPoolExecutor",
    "ContextTimer",
    "Scope",
    "Snapshot",
    "bind",
    "capture",
    "install_default_executor",
    "is_patched",
    "patch",
    "patched",
    "run_captured",
    "run_in_executor",
    "snapshot",
    "unpatch",
    "wrap_executor",
]

# help(), reprs and pickles show the public path (als.ContextThread), not the private module each
# is defined in; inspect.getsource() of a class, which looks in its __module__'s file, is the price.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
