"""How a worker ends a prompt it ran: back in the queue, refused as stale, or recorded.

A prompt interrupted because the worker is stopping past its grace goes back to its place in the
queue, uncounted, as does one whose outputs found the storage full (farm.storage.full: the worker
then waits before it takes another). Otherwise its end is recorded, with the worker's next prompt
taken in the same transaction unless it is stopping; its outputs are kept and its client told
(the held final events, the status, the last `executing`) only if the record was accepted.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from farm.attempt_outputs import AttemptOutputs
from farm.db.models import PromptState
from farm.graph.executor import ExecutionResult
from farm.nodes.base import PromptTimeout
from farm.services import execution
from farm.storage.full import Backoff, is_full_error

log = logging.getLogger(__name__)

_STATES = {"success": PromptState.SUCCESS, "error": PromptState.ERROR, "interrupted": PromptState.INTERRUPTED}


class PromptEnd:
    """The end of each prompt worker `name` runs. `capabilities()` gives the worker's model files
    and loaded checkpoints as it knows them now (what its next prompt is chosen by);
    `publish_status()` queues a status broadcast in order with the worker's events."""

    def __init__(self, name: str, settings, context, bus, hooks, metrics, *, stopping: threading.Event,
                 abandon: threading.Event, capabilities: Callable[[], tuple[frozenset, frozenset]],
                 publish_status: Callable[[], None]):
        self.name = name
        self.settings = settings
        self.context = context
        self.bus = bus
        self.hooks = hooks  # who wants each prompt's end (the webhook outbox)
        self.metrics = metrics
        self.stopping = stopping  # SIGTERM: take no more prompts
        self.abandon = abandon  # past the stop grace: the running prompt goes back
        self.capabilities = capabilities
        self.publish_status = publish_status
        # How long to wait after a prompt found the output storage full (farm.storage.full).
        self.storage_backoff = Backoff(first=1.0, most=30.0)

    def settle(self, claimed: execution.ClaimedPrompt, result: ExecutionResult, held: list[tuple[str, dict]],
               outputs: AttemptOutputs) -> execution.ClaimedPrompt | None:
        """After a prompt ran: put it back, or record its end (keeping its outputs only if
        recorded); the next prompt this worker took, if any."""
        if result.status == "interrupted" and self.abandon.is_set():
            self._put_back(claimed, outputs)
            log.info("worker stopping: %s goes back to the queue", claimed.prompt_id)
            return None
        if result.status == "error" and is_full_error(result.error):
            # Not the prompt's fault: it waits in the queue, uncounted, and this worker waits too
            # (every worker writes to the same storage) before it takes another.
            self._put_back(claimed, outputs)
            delay = self.storage_backoff.failed()
            log.warning("output storage full (%s): %s goes back to the queue; this worker waits %.0f s",
                        result.error.get("exception_message"), claimed.prompt_id, delay)
            self.stopping.wait(delay)
            return None
        self.storage_backoff.succeeded()
        recorded, following = self._record(claimed, result, held)
        if recorded:
            self.metrics.prompts.labels(claimed.team, result.status).inc()
            outputs.keep()
        else:
            outputs.discard()
        return following

    def tell(self, claimed: execution.ClaimedPrompt, held: list[tuple[str, dict]]) -> None:
        """Tell the client its prompt ended (once the end is recorded)."""
        prompt_id, client_id, team = claimed.prompt_id, claimed.client_id, claimed.team
        for event, data in held:
            self.bus.publish(event, data, prompt_id=prompt_id, client_id=client_id, team=team)
        self.publish_status()  # ComfyUI's order: the status broadcast, then the final executing
        self.bus.publish("executing", {"node": None, "prompt_id": prompt_id}, prompt_id=prompt_id, client_id=client_id,
                         team=team)

    def _put_back(self, claimed: execution.ClaimedPrompt, outputs: AttemptOutputs) -> None:
        outputs.discard()
        execution.requeue(self.context.database, claimed.prompt_id, claimed.attempt, self.name)
        self.publish_status()

    def _record(self, claimed: execution.ClaimedPrompt, result: ExecutionResult, held: list[tuple[str, dict]]):
        """Record the prompt's end (taking this worker's next prompt in the same transaction, unless
        it is stopping), then, only if recorded, tell its client. (recorded, next prompt or None)."""
        state = _STATES[result.status]
        timed_out = bool(result.error and result.error.get("exception_type") == PromptTimeout.exception_type)
        files, loaded = self.capabilities()

        def take_next(connection):
            if self.stopping.is_set():
                return None
            return self.context.dispatcher.take_next(connection, self.name, files, loaded)

        recorded, following = execution.finish_then(
            self.context.database, claimed, self.name, state, result.outputs, result.messages, result.error,
            then=take_next, timed_out=timed_out, lock_after=self.settings.lock_after_failures,
            cell_retries=self.settings.cell_retries,
            notify=lambda connection: self.hooks.prompt_ended(
                connection, claimed.prompt_id, claimed.team, claimed.batch_id, claimed.extra_data, state.value,
                result.outputs, result.error))
        if recorded:
            self.tell(claimed, held)
        return recorded, following
