"""The step scheduler, step by step: joins, aborts, bounds, priority, deadlines, admission.

Steps are driven by hand and the clock is injected, so no test depends on timing.
"""

from __future__ import annotations

import pytest

from genserve.runtime.errors import ResourceExhausted
from genserve.runtime.scheduler import (
    Admission,
    Leave,
    Priority,
    Sequence,
    StepPolicy,
    StepScheduler,
)

from .clock import ManualClock

pytestmark = pytest.mark.unit


def seq(name: str, steps: int, **options) -> Sequence:
    """A sequence that is done after `steps` steps; its state is its name and length."""
    return Sequence(state=(name, steps), **options)


def step(scheduler: StepScheduler) -> tuple[list[str], list[str], list[str]]:
    """One step: (names that ran, names that finished, names that left otherwise)."""
    batch, left = scheduler.schedule()
    finished = scheduler.update(batch, [s.steps + 1 >= s.state[1] for s in batch])
    return [s.state[0] for s in batch], [s.state[0] for s in finished], [s.state[0] for s in left]


def test_a_sequence_arriving_mid_way_joins_at_the_next_step_not_after_the_batch():
    scheduler = StepScheduler(StepPolicy(max_running=4))
    scheduler.add(seq("long", 10))
    assert step(scheduler)[0] == ["long"]
    assert step(scheduler)[0] == ["long"]
    scheduler.add(seq("late", 2))
    assert step(scheduler) == (["long", "late"], [], [])
    assert step(scheduler) == (["long", "late"], ["late"], [])
    assert step(scheduler)[0] == ["long"]  # the finished one left at once


def test_each_sequence_keeps_its_slot_while_it_runs_and_frees_it_when_done():
    scheduler = StepScheduler(StepPolicy(max_running=2))
    a, b, c = seq("a", 1), seq("b", 3), seq("c", 3)
    for s in (a, b, c):
        scheduler.add(s)
    assert step(scheduler) == (["a", "b"], ["a"], [])
    assert (a.slot, b.slot) == (0, 1)
    assert step(scheduler) == (["c", "b"], [], [])  # c took a's slot 0
    assert c.slot == 0 and b.slot == 1 and b.steps == 2


def test_a_cancelled_sequence_frees_its_slot_at_the_next_step():
    scheduler = StepScheduler(StepPolicy(max_running=1))
    gone, next_one = seq("gone", 10), seq("next", 1)
    scheduler.add(gone)
    scheduler.add(next_one)
    assert step(scheduler)[0] == ["gone"]
    scheduler.abort(gone)
    assert step(scheduler) == (["next"], ["next"], ["gone"])
    assert gone.left is Leave.ABORTED and gone.steps == 1


def test_a_sequence_cancelled_while_waiting_never_runs():
    scheduler = StepScheduler(StepPolicy(max_running=1))
    first, waiting = seq("first", 2), seq("waiting", 2)
    scheduler.add(first)
    scheduler.add(waiting)
    step(scheduler)
    scheduler.abort(waiting)
    assert step(scheduler) == (["first"], ["first"], ["waiting"])
    assert waiting.steps == 0 and not scheduler.has_unfinished()


def test_the_waiting_queue_bound_holds_and_frees_as_sequences_join():
    scheduler = StepScheduler(StepPolicy(max_running=1, max_waiting=2))
    for name in ("a", "b"):
        scheduler.add(seq(name, 1))
    with pytest.raises(ResourceExhausted, match="2 sequences are already waiting"):
        scheduler.add(seq("c", 1))
    step(scheduler)  # a joins: one waiting place is free again
    scheduler.add(seq("c", 1))
    assert scheduler.num_waiting == 2 and scheduler.num_running == 0


def test_a_higher_priority_joins_first_then_arrival_order():
    scheduler = StepScheduler(StepPolicy(max_running=1))
    scheduler.add(seq("busy", 1))
    step(scheduler)
    for name, priority in (("n1", Priority.NORMAL), ("low", Priority.LOW), ("n2", Priority.NORMAL)):
        scheduler.add(seq(name, 1, priority=priority))
    scheduler.add(seq("high", 1, priority=Priority.HIGH))
    order = [step(scheduler)[0][0] for _ in range(4)]
    assert order == ["high", "n1", "n2", "low"]


def test_a_sequence_whose_deadline_passes_leaves_at_the_next_step():
    clock = ManualClock()
    scheduler = StepScheduler(StepPolicy(max_running=2), clock=clock)
    slow = seq("slow", 100, deadline=clock.now + 5)
    queued = seq("queued", 1, deadline=clock.now + 5)
    scheduler.add(slow)
    assert step(scheduler)[0] == ["slow"]
    clock.now += 5
    scheduler.add(queued)
    assert step(scheduler) == ([], [], ["slow", "queued"])
    assert slow.left is Leave.DEADLINE and queued.left is Leave.DEADLINE
    assert not scheduler.has_unfinished()


def test_a_step_never_holds_more_than_the_slots():
    scheduler = StepScheduler(StepPolicy(max_running=3, max_waiting=100))
    for i in range(10):
        scheduler.add(seq(f"s{i}", 1 + i % 4))
    sizes, finished = [], 0
    while scheduler.has_unfinished():
        ran, done, _ = step(scheduler)
        sizes.append(len(ran))
        finished += len(done)
    assert max(sizes) == 3 and finished == 10


def test_policy_quotes_a_bad_value():
    with pytest.raises(ValueError, match="max_running must be >= 1, got 0"):
        StepPolicy(max_running=0)


def test_request_admission_holds_a_late_sequence_until_the_batch_is_empty_then_admits_it():
    scheduler = StepScheduler(StepPolicy(max_running=4, admission="request"))
    scheduler.add(seq("short", 1))
    scheduler.add(seq("long", 3))
    assert step(scheduler) == (["short", "long"], ["short"], [])
    scheduler.add(seq("late", 1))  # a free slot, but the batch is still running
    assert step(scheduler) == (["long"], [], [])
    assert step(scheduler) == (["long"], ["long"], [])
    assert scheduler.num_waiting == 1
    assert step(scheduler) == (["late"], ["late"], [])
    assert not scheduler.has_unfinished()


def test_request_admission_fills_every_free_slot_when_the_running_set_empties():
    scheduler = StepScheduler(StepPolicy(max_running=2, admission=Admission.REQUEST))
    for name in ("a", "b", "c"):
        scheduler.add(seq(name, 2))
    assert step(scheduler) == (["a", "b"], [], [])
    assert step(scheduler) == (["a", "b"], ["a", "b"], [])
    assert step(scheduler) == (["c"], [], [])


def test_request_admission_lets_waiters_join_once_the_running_ones_are_aborted():
    scheduler = StepScheduler(StepPolicy(max_running=2, admission="request"))
    running, waiting = seq("running", 10), seq("waiting", 1)
    scheduler.add(running)
    step(scheduler)
    scheduler.add(waiting)
    assert step(scheduler)[0] == ["running"]
    scheduler.abort(running)
    assert step(scheduler) == (["waiting"], ["waiting"], ["running"])


def test_request_admission_still_drops_an_expired_waiter_at_the_next_step():
    clock = ManualClock()
    scheduler = StepScheduler(StepPolicy(max_running=2, admission="request"), clock=clock)
    scheduler.add(seq("long", 10))
    step(scheduler)
    expiring = seq("expiring", 1, deadline=clock.now + 1)
    scheduler.add(expiring)
    clock.now += 1
    assert step(scheduler) == (["long"], [], ["expiring"])
    assert expiring.left is Leave.DEADLINE and scheduler.num_waiting == 0


def test_policy_refuses_an_unknown_admission_and_reads_a_known_one_from_text():
    with pytest.raises(ValueError, match="admission must be one of step, request, got 'batch'"):
        StepPolicy(admission="batch")
    assert StepPolicy(admission="request").admission is Admission.REQUEST
