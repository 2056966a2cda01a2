"""The event bus's wire format: one Redis pub/sub channel, each event as two JSON lines.

The routing line {"type", "prompt_id", "client_id"[, "team"]}, then the message exactly as sockets
get it, {"type", "data"}. A relay reads the small first line and forwards the second as it is: it
never parses or re-encodes a large event (a cumulative progress_state of a big graph). Pub/sub
ignores Redis database numbers, so the channel name carries the URL's database number: farms
sharing one Redis server on different databases do not see each other's events.
"""

from __future__ import annotations

import json

CHANNEL = "farm:events"
RUNNING = "farm:running"  # hash: worker name -> {"prompt_id", "client_id", "node"} it runs now


def redis_client_url(url: str) -> str:
    """kombu's `redis+socket:///path` is redis-py's `unix:///path`."""
    return "unix://" + url[len("redis+socket://"):] if url.startswith("redis+socket://") else url


def channel_for(url: str | None) -> str:
    """The events channel of the farm whose events URL is `url` (its database number appended)."""
    if not url:
        return CHANNEL
    import redis

    db = int(redis.ConnectionPool.from_url(redis_client_url(url)).connection_kwargs.get("db") or 0)
    return CHANNEL if db == 0 else f"{CHANNEL}:{db}"


class BusEvent:
    """One event as a relay receives it; `data` is parsed only when asked for."""

    __slots__ = ("type", "prompt_id", "client_id", "team", "message", "_data")

    def __init__(self, event_type: str, prompt_id: str | None, client_id: str | None, message: bytes,
                 team: str | None = None):
        self.type = event_type
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.team = team  # the prompt's team: only its sockets (and admins') get the event
        self.message = message  # {"type", "data"} as UTF-8 JSON: a socket's text frame as it is
        self._data = None

    @property
    def data(self):
        if self._data is None:
            self._data = json.loads(self.message)["data"]
        return self._data


class EncodedDict(dict):
    """Event data that carries its own compact JSON encoding, built by its producer from cached
    parts (a cumulative progress_state re-encodes only the node that changed)."""

    __slots__ = ("json",)

    def __init__(self, value: dict, encoded: str):
        super().__init__(value)
        self.json = encoded


def encode_json(value) -> str:
    return value.json if type(value) is EncodedDict else json.dumps(value, separators=(",", ":"))


def encode_event(event_type: str, data, prompt_id: str | None = None, client_id: str | None = None,
                 team: str | None = None) -> str:
    header = {"type": event_type, "prompt_id": prompt_id, "client_id": client_id}
    if team is not None:
        header["team"] = team
    routing = json.dumps(header, separators=(",", ":"))
    return f'{routing}\n{{"type":{json.dumps(event_type)},"data":{encode_json(data)}}}'


def decode_events(raw: bytes | str) -> list[BusEvent]:
    """The events in a bus message, in order; ValueError when it holds something else."""
    raw = raw.encode() if isinstance(raw, str) else raw
    lines = raw.split(b"\n")  # JSON text holds no raw newline
    if len(lines) % 2:
        raise ValueError("not farm events")
    events = []
    for routing, message in zip(lines[::2], lines[1::2]):
        header = json.loads(routing)
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise ValueError("not a farm event")
        events.append(BusEvent(header["type"], header.get("prompt_id"), header.get("client_id"), message,
                               header.get("team")))
    return events


def status_data(queue_remaining: int) -> dict:
    """The `status` broadcast's data (spec 4.2)."""
    return {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
