"""The event bus publishes every event, in order, on real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from farm.events import CHANNEL, RUNNING, EventBus, RunningNodes, decode_events
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
