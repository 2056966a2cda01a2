"""The meeting points of a coalesced group (farm.graph.group): one batch of work for every member
still running, each member its own result, interrupts and failures kept to their member."""

from __future__ import annotations

import threading
import time

import pytest

from farm.graph.group import CoalescedGroup


class Stop(Exception):
    pass


def run_members(group: CoalescedGroup, plan: dict, work, point: str = "sample") -> dict:
    """Each member's thread: `plan[id]()` first (its own nodes), then the meeting; what each got."""
    got = {}

    def member(prompt_id):
        try:
            plan[prompt_id]()
            got[prompt_id] = group.meet(point, prompt_id, prompt_id.upper(), work,
                                        lambda: checks.get(prompt_id, lambda: None)(), lambda: f"alone-{prompt_id}")
        except Exception as exception:  # noqa: BLE001
            got[prompt_id] = exception
        finally:
            group.leave(prompt_id)

    threads = [threading.Thread(target=member, args=(prompt_id,)) for prompt_id in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return got


checks: dict = {}


def test_one_batch_for_every_member_and_each_gets_its_own_part():
    group = CoalescedGroup(["a", "b", "c"])
    calls = []

    def work(batch):
        calls.append(sorted(batch))
        return {prompt_id: f"done-{payload}" for prompt_id, payload in batch.items()}

    got = run_members(group, {p: (lambda: None) for p in "abc"}, work)
    assert got == {"a": "done-A", "b": "done-B", "c": "done-C"} and calls == [["a", "b", "c"]]
    assert group.batches == {"sample": [3]}


def test_a_member_that_ends_before_the_meeting_is_not_waited_for():
    group = CoalescedGroup(["a", "b", "c"])

    def fails():
        raise Stop("its own node failed")

    got = run_members(group, {"a": lambda: None, "b": fails, "c": lambda: time.sleep(0.3)},
                      lambda batch: {p: f"done-{p}" for p in batch})
    assert isinstance(got["b"], Stop) and got["a"] == "done-a" and got["c"] == "done-c"


def test_an_interrupt_while_waiting_takes_only_that_member_out():
    group = CoalescedGroup(["a", "b", "c"])
    checks.clear()
    checks["b"] = lambda: (_ for _ in ()).throw(Stop("interrupted"))
    try:
        got = run_members(group, {"a": lambda: time.sleep(0.5), "b": lambda: None, "c": lambda: None},
                          lambda batch: {p: f"done-{p}" for p in batch})
    finally:
        checks.clear()
    assert isinstance(got["b"], Stop) and got["a"] == "done-a" and got["c"] == "done-c"


def test_results_that_are_exceptions_are_raised_to_their_member_only():
    group = CoalescedGroup(["a", "b"])
    got = run_members(group, {"a": lambda: None, "b": lambda: None},
                      lambda batch: {"a": "done-a", "b": Stop("stopped at step 3")})
    assert got["a"] == "done-a" and isinstance(got["b"], Stop)


def test_a_failed_batch_makes_each_member_work_alone():
    group = CoalescedGroup(["a", "b"])

    def work(batch):
        raise MemoryError("out of memory")

    assert run_members(group, {"a": lambda: None, "b": lambda: None}, work) == {"a": "alone-a", "b": "alone-b"}


def test_members_never_wait_for_each_other_in_a_circle():
    """b's sampler output was cached: it goes straight to the decode meeting while a waits at the
    sampler. Neither waits for the other there."""
    group = CoalescedGroup(["a", "b"])
    results = {}

    def a():
        results["a"] = [group.meet(point, "a", None, lambda batch, p=point: {q: f"{p}-{len(batch)}" for q in batch},
                                   lambda: None, lambda: "alone") for point in ("sample", "decode")]
        group.leave("a")

    def b():
        results["b"] = [group.meet("decode", "b", None, lambda batch: {q: f"decode-{len(batch)}" for q in batch},
                                   lambda: None, lambda: "alone")]
        group.leave("b")

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert results["a"][0] == "sample-1" and results["b"] and results["a"][1].startswith("decode-")


@pytest.mark.parametrize("points", [("sample", "decode")])
def test_each_meeting_point_batches_separately(points):
    group = CoalescedGroup(["a", "b"])
    results = {}

    def member(prompt_id):
        for point in points:
            results[(prompt_id, point)] = group.meet(point, prompt_id, None, lambda batch, p=point: {
                q: f"{p}-{len(batch)}" for q in batch}, lambda: None, lambda: "alone")
        group.leave(prompt_id)

    threads = [threading.Thread(target=member, args=(p,)) for p in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert set(results.values()) == {"sample-2", "decode-2"} and group.batches == {"sample": [2], "decode": [2]}
