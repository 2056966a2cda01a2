"""The event bus publishes every event, in order, on real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from farm.events import CHANNEL, RUNNING, EventBus, EventListener, RunningNodes, channel_for, decode_events, status_data
from tests.services import service_url

pytestmark = pytest.mark.integration


def test_events_arrive_in_order_with_routing_fields():
    url = service_url("redis")
    subscriber = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(CHANNEL)
    time.sleep(0.1)
    bus = EventBus(url)
    for index in range(300):
        bus.publish("progress", {"value": index, "max": 300}, prompt_id="p1", client_id="c1")
    bus.close()
    received = []
    deadline = time.monotonic() + 10
    while len(received) < 300 and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=0.5)
        if message:
            received.extend(decode_events(message["data"]))
    subscriber.close()
    assert [m.data["value"] for m in received] == list(range(300))
    first = received[0]
    assert (first.type, first.prompt_id, first.client_id) == ("progress", "p1", "c1")
    assert json.loads(first.message) == {"type": "progress", "data": {"value": 0, "max": 300}}


def test_without_a_url_nothing_is_published():
    bus = EventBus(None)
    bus.publish("status", {})
    bus.close()
    assert bus._thread is None


def test_a_worker_keeps_its_running_node_where_any_web_process_finds_it():
    url = service_url("redis").rsplit("/", 1)[0] + "/13"  # a database of our own: RUNNING is per database
    redis.Redis.from_url(url).delete(RUNNING)
    nodes = RunningNodes(url)
    first, second = EventBus(url, worker="w1"), EventBus(url, worker="w2")

    def settle(*buses):
        assert all(bus.flush() for bus in buses)

    first.publish("executing", {"node": "5.0.0.1", "display_node": "5", "prompt_id": "p1"}, prompt_id="p1",
                  client_id="c1")
    second.publish("executing", {"node": "9", "display_node": "9", "prompt_id": "p2"}, prompt_id="p2")
    settle(first, second)
    assert nodes.for_client("c1") == "5"  # the display id (spec 4.1)
    assert nodes.for_client("c2") is None
    # A lost prompt ended by another worker leaves that worker's own field alone.
    second.publish("executing", {"node": None, "prompt_id": "p9"}, prompt_id="p9", client_id="c1", own=False)
    settle(second)
    assert nodes.for_client("c1") == "5"
    first.publish("executing", {"node": None, "prompt_id": "p1"}, prompt_id="p1", client_id="c1")
    settle(first)
    assert nodes.for_client("c1") is None
    first.publish("executing", {"node": "7", "display_node": "7", "prompt_id": "p3"}, prompt_id="p3", client_id="c1")
    settle(first)
    second.forget_running(["w1"])  # w1 was reaped
    settle(second)
    assert nodes.for_client("c1") is None and redis.Redis.from_url(url).hkeys(RUNNING) == [b"w2"]
    down = RunningNodes("redis://127.0.0.1:1/0")
    started = time.monotonic()
    assert down.for_client("c1") is None and down.for_client("c1") is None  # Redis down: no hint, no error,
    assert time.monotonic() - started < 2  # and no second wait for it
    first.close(), second.close()


def test_a_status_is_counted_by_the_bus_thread_in_its_place_and_only_while_a_relay_listens():
    url = service_url("redis").rsplit("/", 1)[0] + "/11"
    counted, received = [], []
    listener = EventListener(url, received.append, idle_seconds=0.2)
    bus = EventBus(url)

    def count(value):
        def counter():
            counted.append(value)
            if value is None:
                raise RuntimeError("database down")
            return value
        return counter

    bus.publish_status(count(1))  # nobody listens: not even counted
    assert bus.flush() and counted == []
    assert listener.acquire()  # subscribed on return: nothing published from now on is missed
    bus.publish("execution_success", {"prompt_id": "p1"}, prompt_id="p1", client_id="c1")
    bus.publish_status(count(7))
    bus.publish_status(count(None))  # a failed count costs that broadcast only
    bus.publish("executing", {"node": None, "prompt_id": "p1"}, prompt_id="p1", client_id="c1")
    assert bus.flush()
    deadline = time.monotonic() + 5
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(e.type, e.data) for e in received] == [
        ("execution_success", {"prompt_id": "p1"}), ("status", status_data(7)),
        ("executing", {"node": None, "prompt_id": "p1"})]
    assert counted == [7, None]

    listener.release()  # the last holder went: after idle_seconds the relay unsubscribes
    subscribers = lambda: redis.Redis.from_url(url).pubsub_numsub(channel_for(url))[0][1]  # noqa: E731
    deadline = time.monotonic() + 5
    while subscribers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscribers() == 0 and not listener.subscribed
    assert listener.acquire() and subscribers() == 1  # and subscribes again for the next socket
    listener.release()
    listener.stop()
    bus.close()
