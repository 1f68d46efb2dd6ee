"""Each example runs and passes its own check; the checks themselves catch a crossed id."""

from __future__ import annotations

import ast
import subprocess
import sys

from .helpers import EXAMPLES, THREADS_INHERIT, load_example


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>.py`` as a user would; it must exit 0."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_seed_server_demo() -> None:
    """The seed demo serves 20 concurrent requests and finds every line carrying its own id."""
    result = run_example("seed_server", "--demo")
    assert "OK: 20 requests, 80 log lines" in result.stdout
    assert "MISMATCH" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if "[client " in line]
    assert len(lines) == 80
    assert any("in a worker thread" in line and "asyncio_" in line for line in lines)


def test_seed_server_check_catches_crossed_ids() -> None:
    """The demo's check reports a line carrying another request's id, a lost id and a missing hop."""
    seed = load_example("seed_server")
    good = [
        f"{rid:>3}: {message:<20} [client {client}, MainThread]"
        for rid, client in ((0, "00"), (1, "01"))
        for message in seed.MESSAGES
    ]
    assert seed.check(good, {"00": "0", "01": "1"}) == []
    crossed = [line.replace("  1: finish", "  0: finish") for line in good]
    assert any("client 01" in p and "'0'" in p for p in seed.check(crossed, {"00": "0", "01": "1"}))
    lost = [line.replace("  1: in a worker", "  -: in a worker") for line in good]
    assert any("'-'" in p for p in seed.check(lost, {"00": "0", "01": "1"}))
    assert seed.check(good[:-1], {"00": "0", "01": "1"})
    assert seed.check(good, {"00": "0", "01": "0"})


def test_legacy_threads() -> None:
    """Unpatched, the legacy module loses ids, or (where threads inherit) shows wrong ones on the shared
    pool's lines; after als.patch(), every line carries its own, on every interpreter."""
    result = run_example("legacy_threads")
    if THREADS_INHERIT:  # the shared pool's worker keeps the first request's id: three wrong lines
        assert "without the patch: 0 of 40 lines lost their request id, 3 carried another" in result.stdout
    else:
        assert "without the patch: 32 of 40 lines lost their request id, 0 carried another" in result.stdout
    assert "with the patch: all 40 lines carry their own request's id" in result.stdout


def test_legacy_threads_check_catches_crossed_and_lost_ids() -> None:
    """The legacy example's check reports a line with another request's id, with none, and a missing one."""
    legacy = load_example("legacy_threads")
    good = {(order, message): rid for order, rid in legacy.ORDERS.items() for message in legacy.MESSAGES}
    assert legacy.check(good) == []
    crossed = good | {("order-1", "Timer"): "req-b2"}
    lost = good | {("order-2", "Thread subclass"): "-"}
    missing = {k: v for k, v in good.items() if k != ("order-3", "request end")}
    assert legacy.check(crossed) == ["order-1 'Timer': expected req-a1, got req-b2"]
    assert legacy.check(lost) == ["order-2 'Thread subclass': expected req-b2, got -"]
    assert legacy.check(missing) == ["order-3 'request end': expected req-c3, got no line"]


def test_web_apps_demo() -> None:
    """Flask under wsgiref and Starlette under uvicorn: every line and every response carry their own id."""
    result = run_example("web_apps")
    assert "MISMATCH" not in result.stdout
    assert "OK: every log line carries its own request's id" in result.stdout
    assert "flask-own  HTTP 200  X-Request-ID: 7f3a9c2e4b1d8f6a0c5e2b9d4a7f1c3e" in result.stdout
    assert "async-own  HTTP 200  X-Request-ID: edge:4b1d-77" in result.stdout
    assert "boom-0     HTTP 500  X-Request-ID: " in result.stdout
    assert "x" * 200 not in result.stdout
    assert "not an id" not in result.stdout  # an invalid id is never logged or echoed


def test_web_apps_check_catches_crossed_lost_and_kept_ids() -> None:
    """The web example's check reports a crossed id, a missing line, an invalid id kept, and a shared id."""
    web = load_example("web_apps")
    requests = [("sync-a", "/sync/a", None), ("sync-b", "/sync/b", "edge-1"), ("sync-c", "/sync/c", "a b")]
    answers = {"sync-a": (200, "id-a"), "sync-b": (200, "edge-1"), "sync-c": (200, "id-c")}

    def lines(ids: dict[str, str]) -> list[str]:
        return [f"{ids[client]:<32} {client:<10} {'sync endpoint':<22} [Thread-1]" for client in ids]

    good = {"sync-a": "id-a", "sync-b": "edge-1", "sync-c": "id-c"}
    assert web.check(lines(good), requests, answers) == []
    crossed = lines(good) + lines({"sync-a": "id-c"})
    assert web.check(crossed, requests, answers) == [
        "sync-a: logged ['sync endpoint', 'sync endpoint'], expected ['sync endpoint']",
        "sync-a: got id 'id-a' back but its lines carry ['id-a', 'id-c']",
    ]
    assert web.check(lines(good)[1:], requests, answers) == [
        "sync-a: logged [], expected ['sync endpoint']",
        "sync-a: got id 'id-a' back but its lines carry []",
    ]
    invalid = [*requests[:2], ("sync-c", "/sync/c", "bad!id")]
    kept_bad = {**answers, "sync-c": (200, "bad!id")}
    assert web.check(lines({**good, "sync-c": "bad!id"}), invalid, kept_bad) == [
        "sync-c: sent 'bad!id' and got 'bad!id' back"
    ]
    shared = {**answers, "sync-c": (200, "id-a")}
    assert "sync-a and sync-c share id id-a" in web.check(lines({**good, "sync-c": "id-a"}), requests, shared)


def test_process_pool_demo() -> None:
    """A shared process pool: as is, no worker line carries an id; wrapped, every one carries its own."""
    result = run_example("process_pool")
    assert "as is:\n" in result.stdout
    assert "  0 of 6 lines carry their request's id" in result.stdout
    assert "  6 of 6 lines carry their request's id" in result.stdout
    assert "  req-b2 sent -> req-b2 | resized c.png" in result.stdout
    assert "OK: every line logged in a worker process carries its own request's id" in result.stdout


def checked_in_a_child(name: str, argument: object) -> object:
    """``examples/<name>.py``'s ``check(argument)``, run in a process of its own: an example that makes
    a carried storage (or installs a record factory) on import stays out of this one."""
    code = (
        f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); import {name};"
        f" print(repr({name}.check({argument!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout)


def test_process_pool_check_catches_crossed_and_lost_ids() -> None:
    good = [("req-a1", "req-a1 | resized a.png"), ("req-b2", "req-b2 | resized c.png")]
    assert checked_in_a_child("process_pool", good) == []
    crossed = [("req-a1", "req-b2 | resized a.png"), ("req-b2", "- | resized c.png")]
    assert checked_in_a_child("process_pool", crossed) == [
        "expected req-a1: req-b2 | resized a.png",
        "expected req-b2: - | resized c.png",
    ]


def test_celery_demo() -> None:
    """Three requests and one nightly job publish to a real worker (and a real redis-server, started
    by the example): each task's line, and its nested task's, carries its publisher's id, or none."""
    result = run_example("celery_tasks")
    assert "  req-b2 | order-2 charged\n  req-b2 | receipt for order-2 sent" in result.stdout
    assert "  - | nightly charged\n  - | receipt for nightly sent" in result.stdout
    assert "OK: every task's line carries the id of the request that published it" in result.stdout


def test_celery_check_catches_crossed_ids() -> None:
    assert checked_in_a_child("celery_tasks", {"order-1": ["req-a1 | order-1 charged"]}) == []
    crossed = {"order-1": ["req-b2 | order-1 charged"], "nightly": ["req-a1 | nightly charged"]}
    assert checked_in_a_child("celery_tasks", crossed) == [
        "order-1: req-b2 | order-1 charged",
        "nightly: req-a1 | nightly charged",
    ]


def test_web_frameworks() -> None:
    """Django and aiohttp each log their requests' ids, return them, and send them on through requests and
    httpx under forward(); the example checks every line itself."""
    result = run_example("web_frameworks")
    assert result.stdout.rstrip().endswith("carry one id"), result.stdout
    assert "MISMATCH" not in result.stdout
    assert result.stdout.count("inventory got X-Request-ID: ") == 4
