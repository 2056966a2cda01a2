"""The prompt timeout's last resort: a node that ignores the interrupt past the timeout.

The runtime interrupts a prompt at its deadline (`FARM_PROMPT_TIMEOUT_SECONDS`); a node that
never checks for interrupts (a stuck load, a native call) would hold the GPU for good. Once the
deadline plus `KILL_GRACE_SECONDS` has passed with the same prompt still running, the watchdog
records the prompt's end itself (error, type Timeout, counted in the worker's loss streak), tells
its client, and ends the process; `farm worker`'s supervisor starts it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from farm.db.models import PromptState
from farm.nodes.base import PromptTimeout
from farm.services import execution, reaping

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 10.0
EXIT_CODE = 75


class Watchdog:
    def __init__(self, runtime):
        self.runtime = runtime
        self._thread = threading.Thread(target=self._watch, name="farm-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        runtime = self.runtime
        while not runtime.stopped(0.5):
            claimed, deadline = runtime.running()
            if claimed is not None and deadline is not None and time.monotonic() > deadline + KILL_GRACE_SECONDS:
                self._end(claimed)

    def _end(self, claimed) -> None:
        runtime, settings = self.runtime, self.runtime.settings
        message = (f"the prompt ran longer than the farm's limit of {settings.prompt_timeout_seconds:g} s "
                   f"and did not stop; its worker was restarted")
        error = reaping.worker_lost_error(claimed.prompt_id, message, PromptTimeout.exception_type)
        log.error("prompt %s: %s", claimed.prompt_id, message)
        try:
            # On the heartbeat's connection: the stuck thread may hold the runtime's.
            if execution.finish(runtime.heartbeat.database, claimed, runtime.name, PromptState.ERROR, {},
                                [["execution_error", error]], error, timed_out=True,
                                lock_after=settings.lock_after_failures, give_up=lambda: True):
                runtime.ends.tell(claimed, [("execution_error", error)])
                runtime.bus.flush(5)
        except Exception:  # noqa: BLE001 - unrecorded, the prompt is taken back once this worker is gone
            log.exception("could not record the timeout of %s", claimed.prompt_id)
        os._exit(EXIT_CODE)
