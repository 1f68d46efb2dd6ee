"""gevent's monkey.patch_all() and als.patch(), in a process of their own.

gevent's monkey-patching lasts for the life of the process, so the test suite
runs this module in a child process: ``python -m tests.gevent_peer ORDER``
(ORDER: ``gevent-first`` or ``als-first``). It prints, as JSON, the store a
thread, a timer and a pool task see, whether als says it is patched, and
whether ``unpatch()`` then leaves gevent's own functions in place.
"""

from __future__ import annotations

import json
import sys


def main(order: str) -> dict[str, object]:
    if order == "gevent-first":
        from gevent import monkey

        monkey.patch_all()
        import als

        als.patch()
    else:
        import als

        als.patch()
        from gevent import monkey

        monkey.patch_all()
    import threading
    from concurrent.futures import ThreadPoolExecutor

    storage: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="request_id")
    seen: dict[str, object] = {}
    thread = threading.Thread(target=lambda: seen.__setitem__("thread", storage.get_store()))
    timer = threading.Timer(0, lambda: seen.__setitem__("timer", storage.get_store()))
    storage.run("A", lambda: (thread.start(), timer.start()))
    thread.join(10)
    timer.join(10)
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen["pool"] = storage.run("A", pool.submit, storage.get_store).result(10)
    seen["is_patched"] = als.is_patched()
    hook = "_start_joinable_thread" if hasattr(threading, "_start_joinable_thread") else "_start_new_thread"
    als.unpatch()
    seen["gevent's start after unpatch"] = getattr(threading, hook).__module__.startswith("gevent")
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
