"""The test suite's own tools: the Sequencer orders blocks across threads and fails instead of hanging."""

from __future__ import annotations

import threading

import pytest

from .helpers import TIMEOUT, Sequencer, Worker, join_all


def wait_until_waiting(seq: Sequencer, steps: list[int]) -> None:
    """Block until exactly ``steps`` are waiting for their turn (bounded): they got there first."""
    with seq._turn:
        assert seq._turn.wait_for(lambda: seq.waiting == steps, TIMEOUT), seq.waiting


def test_blocks_run_in_step_order_across_three_threads() -> None:
    """Threads started last step first still run their blocks 0, 1, 2, one at a time."""
    seq = Sequencer()
    ran: list[int] = []
    inside: list[int] = []  # the steps inside their block right now
    lock = threading.Lock()

    def step(n: int) -> None:
        with seq(n):
            with lock:
                inside.append(n)
                assert inside == [n], f"step {n} overlapped {inside}"
            ran.append(n)
            with lock:
                inside.remove(n)

    later = [Worker(step, 2), Worker(step, 1)]
    for worker in later:
        worker.start()
    wait_until_waiting(seq, [1, 2])  # both are blocked before step 0 exists
    first = Worker(step, 0)
    first.start()
    join_all([first, *later])
    assert ran == [0, 1, 2]
    assert seq.waiting == []


def test_a_step_that_waits_too_long_fails_and_breaks_the_sequence() -> None:
    """A step whose turn never comes raises AssertionError after the timeout, without running its
    block; from then on every step fails at once, the one it waited for included."""
    seq = Sequencer(timeout=0.01)
    ran: list[int] = []
    never_ended = r"^step 1 waited 0.01 s for step 0, which never ended$"
    with pytest.raises(AssertionError, match=never_ended), seq(1):
        ran.append(1)
    with pytest.raises(AssertionError, match=r"^step 0 cannot run: step 1 waited"), seq(0):
        ran.append(0)
    assert ran == []


def test_a_step_entered_twice_fails_at_once() -> None:
    """A step number used again raises AssertionError without waiting and without running the block."""
    seq = Sequencer()
    ran: list[str] = []
    with seq(0):
        ran.append("first")
    with pytest.raises(AssertionError, match=r"^step 0 entered twice$"), seq(0):
        ran.append("second")
    with pytest.raises(AssertionError, match=r"^step 1 cannot run: step 0 entered twice$"), seq(1):
        ran.append("next")
    assert ran == ["first"]


def test_a_negative_step_fails_at_once() -> None:
    """Steps are numbered from 0: a negative one could never run."""
    with pytest.raises(AssertionError, match=r"^step -1: steps are numbered from 0$"), Sequencer()(-1):
        pass


def test_an_error_in_a_block_propagates_and_wakes_the_waiting_steps() -> None:
    """An exception from a block comes out unchanged; a step already waiting fails at once instead of
    waiting for its timeout, and so does a step that comes later."""
    seq = Sequencer(timeout=10 * TIMEOUT)  # longer than join_all waits: only the wake-up ends it in time
    error = LookupError("in step 0")
    waiter_saw: list[BaseException] = []

    def waiter() -> None:
        with pytest.raises(AssertionError) as info, seq(1):
            pass
        waiter_saw.append(info.value)

    worker = Worker(waiter)
    worker.start()
    wait_until_waiting(seq, [1])
    with pytest.raises(LookupError) as raised, seq(0):
        raise error
    assert raised.value is error
    join_all([worker])
    assert [str(e) for e in waiter_saw] == ["step 1 cannot run: step 0 raised LookupError('in step 0')"]
    with pytest.raises(AssertionError, match=r"^step 2 cannot run: step 0 raised"), seq(2):
        pass
