"""The event bus: workers publish every execution event; web processes relay them to sockets.

`wire` is the format on the Redis channel, `bus` the publishing side (EventBus, StatusPublisher),
`listener` the receiving side of a web process, `running` what each worker runs now.
"""

from farm.events.bus import EventBus, StatusPublisher
from farm.events.listener import EventListener
from farm.events.running import RunningNodes
from farm.events.wire import (CHANNEL, RUNNING, BusEvent, EncodedDict, channel_for, decode_events, encode_event,
                              encode_json, redis_client_url, status_data)

__all__ = ["CHANNEL", "RUNNING", "BusEvent", "EncodedDict", "EventBus", "EventListener", "RunningNodes",
           "StatusPublisher", "channel_for", "decode_events", "encode_event", "encode_json", "redis_client_url",
           "status_data"]
