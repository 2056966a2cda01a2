"""The web's dispatch trigger with wakes (farm.queue.trigger, farm.queue.wake): each request wakes
the listening workers at once; the pass waits the grace only after a wake that reached some, and
waiting for it never holds the next wake back. A real dispatcher on the test database; the
RecordingSender stands in for Celery delivery, `wake` reports how many workers listened."""

from __future__ import annotations

import time

from farm.queue.trigger import DispatchTrigger
from tests.unit.test_dispatch_and_history import register, submit


def _eventually(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class Wakes:
    def __init__(self, listeners: int):
        self.listeners = listeners
        self.times: list[float] = []

    def __call__(self) -> int:
        self.times.append(time.monotonic())
        return self.listeners


def test_after_waking_listening_workers_the_pass_waits_the_grace(client, context, sender):
    submit(client)  # no live worker yet: it waits in the queue
    register(context, "w1")
    wakes = Wakes(listeners=1)
    trigger = DispatchTrigger(context.dispatcher, wake=wakes, grace=1.5)
    requested = time.monotonic()
    trigger.request()
    assert _eventually(lambda: wakes.times) and wakes.times[0] - requested < 1.0
    time.sleep(0.3)
    assert sender.sent == []  # the woken worker's turn to claim it
    assert _eventually(lambda: sender.sent)  # nobody did: the pass serves it
    assert time.monotonic() - requested >= 1.5


def test_when_no_worker_listens_the_pass_runs_at_once(client, context, sender):
    submit(client)
    register(context, "w1")
    trigger = DispatchTrigger(context.dispatcher, wake=Wakes(listeners=0), grace=30.0)
    trigger.request()
    assert _eventually(lambda: sender.sent, 10.0)


def test_a_pass_waiting_for_its_grace_does_not_hold_the_next_wake_back(context):
    wakes = Wakes(listeners=1)
    trigger = DispatchTrigger(context.dispatcher, wake=wakes, grace=30.0)
    trigger.request()
    assert _eventually(lambda: len(wakes.times) == 1)
    trigger.request()  # a second submission while the first pass waits
    assert _eventually(lambda: len(wakes.times) == 2)
    assert wakes.times[1] - wakes.times[0] < 5.0
