"""A socket's outgoing frames: WebSocket frame encoding, preview frames, and the bounded outbox."""

from __future__ import annotations

import base64
import collections
import json
import socket
import struct
import threading

# Binary frame codes (spec 4.4) and image formats.
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4
IMAGE_FORMATS = {"image/jpeg": 1, "image/png": 2}
PREVIEW_METADATA_KEYS = ("node_id", "prompt_id", "display_node_id", "parent_node_id", "real_node_id", "image_type")


TEXT, BINARY = 0x1, 0x2


def encode_frame(payload: bytes, opcode: int) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455 5.2).

    Never compressed, so one encoding serves every socket: with permessage-deflate a message may
    still be sent uncompressed (RFC 7692 6), and it leaves both compression contexts alone.
    """
    first, size = 0x80 | opcode, len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def text_frame(text: str | bytes) -> bytes:
    """A text frame of `text` (UTF-8 bytes are taken as they are)."""
    return encode_frame(text.encode() if isinstance(text, str) else text, TEXT)


def binary_frame(data: bytes) -> bytes:
    return encode_frame(data, BINARY)


class Outbox:
    """Everything written to one socket, in order, without ever blocking the writer.

    A frame goes straight to the kernel (a non-blocking send) when nothing is queued before it;
    what the kernel does not take waits here, bounded, for the socket's handler thread, which
    writes it with blocking sends. `put` answers False when the queue is full. A frame given a
    `key` replaces a queued, unsent frame of the same key (a newer snapshot of the same thing: a
    prompt's cumulative progress_state, the queue length), so a client that lags behind a big
    graph gets fewer snapshots instead of being dropped.
    """

    def __init__(self, wake: threading.Event, max_frames: int, max_bytes: int, sock: socket.socket | None = None):
        self.wake = wake
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.sock = sock  # None: everything queues (no direct writes)
        self.closing = False  # the server is going away: send what is queued, then close
        # One-element lists: a replaced frame's cell is emptied in place, where it stood in line.
        self._cells: collections.deque[list] = collections.deque()
        self._keyed: dict = {}
        self._frames = 0
        self._bytes = 0
        self._writing = False  # the handler is sending a frame it took
        self._lock = threading.Lock()

    def put(self, frame: bytes, bounded: bool = True, key=None) -> bool:
        with self._lock:
            if self.sock is not None and not self._cells and not self._writing:
                try:
                    sent = self.sock.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = 0  # a broken connection: the handler finds out when it sends this
                if sent == len(frame):
                    return True
                frame, bounded, key = frame[sent:], False, None  # the rest of a started frame must follow it
            replaced = self._keyed.pop(key, None) if key is not None else None
            if replaced is not None and replaced[0] is not None:
                self._frames -= 1
                self._bytes -= len(replaced[0])
                replaced[0] = None
            if bounded and (self._frames >= self.max_frames or self._bytes + len(frame) > self.max_bytes):
                return False
            cell = [frame]
            self._cells.append(cell)
            if key is not None:
                self._keyed[key] = cell
            self._frames += 1
            self._bytes += len(frame)
        self.wake.set()
        return True

    def pop(self) -> bytes | None:
        """The next frame for the handler to send; no direct writes until it asks again."""
        with self._lock:
            while self._cells:
                cell = self._cells.popleft()
                frame, cell[0] = cell[0], None  # a sent frame is never replaced any more
                if frame is not None:
                    self._writing = True
                    self._frames -= 1
                    self._bytes -= len(frame)
                    return frame
            self._writing = False
            self._keyed.clear()
            return None

    def close(self) -> None:
        self.closing = True
        self.wake.set()

    def __len__(self) -> int:
        return self._frames


def preview_frame(kind: int, data: dict) -> bytes:
    image = base64.b64decode(data["image"])
    if kind == PREVIEW_IMAGE:
        return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS.get(data.get("image_type"), 1)) + image
    metadata = json.dumps({key: data.get(key) for key in PREVIEW_METADATA_KEYS}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(metadata)) + metadata + image
