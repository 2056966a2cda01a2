"""A running prompt's progress events: cumulative `progress_state`, `progress`, and sampling previews.

`progress_state` carries every node started so far in the prompt, running or finished (ComfyUI's
cumulative view). Each message is built from per-node JSON encoded when that node changed, so a
graph of n nodes costs O(n) string joins per message, not O(n) re-encodings. Its size grows with
the graph while its rate grows with the speed of the nodes, so a prompt's snapshots share a byte
budget (STATE_BYTES_PER_SECOND): past it a snapshot is skipped, the next one carries everything,
and the last one always goes before the prompt's end. Graphs of ordinary size never reach it and
get ComfyUI's exact sequence; a 1,500-node chain of quick nodes would otherwise push hundreds of
MB a second through Redis, which disconnects subscribers that fall that far behind.

Previews are made only when a preview method is on, and at most one per PREVIEW_INTERVAL per
prompt: the node offers a render function, which runs only when due.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Callable

from farm.events import EncodedDict

Emit = Callable[[str, dict], None]

log = logging.getLogger(__name__)

# The bus event that carries a preview image; web processes turn it into binary frames.
PREVIEW_EVENT = "preview_image"
PREVIEW_INTERVAL = 0.25
# The progress_state budget of one prompt: bytes a second, and the burst a quiet prompt saves up.
STATE_BYTES_PER_SECOND = 2 << 20
STATE_BURST_BYTES = 512 << 10
# ComfyUI's --preview-method values; the farm renders every method but "none" as latent2rgb.
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


def preview_method(extra_data: dict, default: str) -> str:
    """The prompt's `extra_data.preview_method` when it names a method, else the worker's
    ("default" and unknown names included); an unknown worker setting means "none"."""
    requested = extra_data.get("preview_method") if isinstance(extra_data, dict) else None
    if requested in PREVIEW_METHODS:
        return requested
    return default if default in PREVIEW_METHODS else "none"


class ProgressReporter:
    """One prompt's `progress_state` (every node started so far, cumulative), `progress` and previews."""

    def __init__(self, send: Emit, prompt_id: str, previews: bool):
        self.send = send
        self.prompt_id = prompt_id
        # Entries are replaced, never changed in place: sent messages share them.
        self.nodes: dict[str, dict] = {}
        self._encoded: dict[str, str] = {}  # node id -> '"id":{entry}'
        self._prefix = '{"prompt_id":' + json.dumps(prompt_id) + ',"nodes":{'
        self._budget, self._budget_at = float(STATE_BURST_BYTES), time.monotonic()
        self._skipped = False  # a snapshot was skipped since the last one sent
        self._size = len(self._prefix) + 1  # the snapshot's length: "}}", less the first entry's comma
        # A node offers a render function; it runs only when a report is due a preview.
        self.offer_preview = self._offer if previews else None
        self._render: Callable[[], tuple[str, bytes]] | None = None
        self._last_preview = float("-inf")

    def start(self, node_id: str) -> None:
        self._update(node_id, value=0, max=1, state="running")
        self._send_state()

    def finish(self, node_id: str) -> None:
        self._update(node_id, value=self._entry(node_id)["max"], state="finished")
        self._send_state()

    def report(self, node_id: str, value, maximum) -> None:
        """A progress-bar update: progress_state, the preview, progress. (Web processes move a
        preview behind the `progress` for sockets that get it without metadata, as ComfyUI.)"""
        self._update(node_id, value=value, max=maximum)
        self._send_state()
        render, self._render = self._render, None
        if render is not None and time.monotonic() - self._last_preview >= PREVIEW_INTERVAL:
            self._last_preview = time.monotonic()
            self._send_preview(node_id, render)
        self.send("progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id})

    def flush(self) -> None:
        """The prompt ends: send the latest snapshot if the budget held it back."""
        if self._skipped:
            self._send_state(always=True)

    def _offer(self, render: Callable[[], tuple[str, bytes]]) -> None:
        self._render = render

    def _entry(self, node_id: str) -> dict:
        entry = self.nodes.get(node_id)
        if entry is None:
            entry = {
                "value": 0, "max": 1, "state": "running", "node_id": node_id, "prompt_id": self.prompt_id,
                "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
            }
        return entry

    def _update(self, node_id: str, **changes) -> None:
        entry = self.nodes[node_id] = {**self._entry(node_id), **changes}
        encoded = json.dumps(node_id) + ":" + json.dumps(entry, separators=(",", ":"))
        previous = self._encoded.get(node_id)
        self._size += len(encoded) - (len(previous) if previous is not None else -1)  # -1: its comma
        self._encoded[node_id] = encoded

    def _send_state(self, always: bool = False) -> None:
        now = time.monotonic()
        self._budget = min(float(STATE_BURST_BYTES), self._budget + (now - self._budget_at) * STATE_BYTES_PER_SECOND)
        self._budget_at = now
        # Known before joining: a skipped snapshot costs nothing. A snapshot bigger than the burst
        # goes when the budget is full, and the debt it leaves is paid off before the next.
        size = self._size
        if not always and self._budget < min(size, STATE_BURST_BYTES):
            self._skipped = True
            return
        self._budget -= size
        self._skipped = False
        encoded = self._prefix + ",".join(self._encoded.values()) + "}}"
        self.send("progress_state", EncodedDict({"prompt_id": self.prompt_id, "nodes": dict(self.nodes)}, encoded))

    def _send_preview(self, node_id: str, render: Callable[[], tuple[str, bytes]]) -> None:
        try:
            image_type, image = render()
        except Exception:  # noqa: BLE001 - a failed preview must never fail the prompt
            log.exception("could not render a preview for node %s", node_id)
            return
        self.send(PREVIEW_EVENT, {
            "node_id": node_id, "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
            "real_node_id": node_id, "image_type": image_type, "image": base64.b64encode(image).decode("ascii"),
        })
