"""The event bus publishes every event, in order, on real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from farm.events import CHANNEL, EventBus, decode_events
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
