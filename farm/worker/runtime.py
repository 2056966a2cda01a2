"""What a worker process does: register, heartbeat, and run the prompts sent to it.

A prompt runs only after this worker claimed it for the attempt in the message; its events go
to the event bus as they happen; its history entry is written before the final
`executing {node: null}` event. When the worker is asked to stop, the running prompt is
interrupted at the next node or sampler step and put back in the queue, so nothing is lost.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid

import farm
from farm.db.models import PromptState
from farm.events import EventBus
from farm.engine.compiled import from_settings as compiled_unets
from farm.engine.model_cache import ModelCache
from farm.graph.cache import ExecutionCache
from farm.graph.executor import ExecutionResult, GraphExecutor, now_ms
from farm.models import LocalModelInventory, inventory
from farm.nodes.base import Interrupted
from farm.queue.celery_app import worker_queue_name
from farm.queue.sender import CelerySender
from farm.services import execution, history, workers
from farm.services.context import make_context
from farm.worker.device import device_report

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings, app, name: str, gpu: int | None, registry=None):
        self.settings = settings
        self.name = name
        self.context = make_context(settings, registry=registry, sender=CelerySender(app),
                                    models=LocalModelInventory(settings.models_dir))
        self.models = ModelCache(settings.models_dir, device_budget=settings.model_cache_bytes,
                                 compiler=compiled_unets(settings), channels_last=settings.channels_last)
        self.execution_cache = ExecutionCache(self.context.registry, self.context.node_env)
        self.executor = GraphExecutor(
            self.context.registry, self.context.storage, self.context.node_env,
            models=self.models, cache=self.execution_cache, on_out_of_memory=self._free_everything,
        )
        self.bus = EventBus(settings.events_url, worker=name)
        self.executor.preview_method = settings.preview_method
        self.info = workers.WorkerInfo(
            name=name, session=uuid.uuid4().hex, queue=worker_queue_name(name), host=socket.gethostname(),
            pid=os.getpid(), gpu_index=gpu, device_name="", device_type="", version=farm.__version__,
            python_version=sys.version,
        )
        self._stopping = threading.Event()
        self._interrupt = threading.Event()
        # Interrupts can arrive before the prompt starts here (it was only dispatched): remember them.
        self._interrupt_requests: collections.deque[str] = collections.deque(maxlen=1024)
        self._state_lock = threading.Lock()
        self._execution_lock = threading.Lock()
        self._pending_free = (False, False)
        self._heartbeat_thread: threading.Thread | None = None
        self._inventory_at = float("-inf")

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._refresh_info()
        self.bus.forget_running([self.name])  # whatever this worker's previous life was running
        self._announce_lost(workers.register(self.context.database, self.info, self.settings))
        log.info("worker %s registered (%s)", self.name, self.info.device_name)
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="farm-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        self.context.warm_up()
        gc.collect()
        gc.freeze()  # start-up objects (torch, Celery) never need collecting: keep full collections short
        self.context.dispatcher.dispatch()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=10)
        workers.deregister(self.context.database, self.info)
        self.bus.forget_running([self.name])
        self.bus.close()
        self.context.database.dispose()
        log.info("worker %s deregistered", self.name)

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt `prompt_id` if it runs here now, or as soon as it starts here."""
        with self._state_lock:
            self._interrupt_requests.append(prompt_id)
            if self.info.current_prompt == prompt_id:
                self._interrupt.set()
        log.info("interrupt requested for %s", prompt_id)

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: act now when idle, otherwise right after the running prompt."""
        with self._state_lock:
            self._pending_free = (self._pending_free[0] or unload_models, self._pending_free[1] or free_memory)
        if self._execution_lock.acquire(blocking=False):
            try:
                self._apply_free()
            finally:
                self._execution_lock.release()

    def _apply_free(self) -> None:
        with self._state_lock:
            unload_models, free_memory = self._pending_free
            self._pending_free = (False, False)
        if not (unload_models or free_memory):
            return
        if free_memory:
            self.execution_cache.clear()  # cached node outputs hold models and tensors too
        self.models.clear()
        log.info("freed memory (unload_models=%s, free_memory=%s)", unload_models, free_memory)

    def _free_everything(self) -> None:
        """After running out of memory: start the next prompt with nothing cached."""
        self.execution_cache.clear()
        self.models.clear()

    def _refresh_info(self) -> None:
        for key, value in device_report().items():
            setattr(self.info, key, value)
        self.info.loaded_models = self.models.report()
        # Walking a large (network) models folder is not free: look again every few heartbeats.
        if time.monotonic() - self._inventory_at > 10 * self.settings.heartbeat_seconds:
            self.info.model_files = inventory(self.settings.models_dir)
            self._inventory_at = time.monotonic()

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_seconds):
            try:
                self._refresh_info()
                self._announce_lost(workers.heartbeat(self.context.database, self.info, self.settings))
                reaped = workers.reap(self.context.database, self.settings)
                self.bus.forget_running(reaped.dead)
                if reaped.taken:
                    self._announce_lost(reaped.failed, status=True)
                self.context.dispatcher.dispatch()
            except Exception:  # noqa: BLE001 - a database or broker hiccup must not kill the worker
                log.exception("heartbeat failed")

    # prompts --------------------------------------------------------------------------------
    def _check_interrupt(self) -> None:
        if self._stopping.is_set() or self._interrupt.is_set():
            self._interrupt.clear()
            raise Interrupted()

    def execute(self, prompt_id: str, attempt: int) -> None:
        with self._execution_lock:
            self._execute(prompt_id, attempt)
            self._apply_free()
        if not self._stopping.is_set():
            self.context.dispatcher.dispatch(only=self.name)

    def _execute(self, prompt_id: str, attempt: int) -> None:
        claimed = execution.claim(self.context.database, prompt_id, attempt, self.name)
        if claimed is None:
            log.info("dropping stale message for %s attempt %s", prompt_id, attempt)
            return
        with self._state_lock:
            self.info.current_prompt = prompt_id
            # ComfyUI clears the flag when a prompt starts: an interrupt never carries over.
            self._interrupt.clear()
            if prompt_id in self._interrupt_requests:
                self._interrupt.set()

        def emit(event: str, data: dict) -> None:
            self.bus.publish(event, data, prompt_id=prompt_id, client_id=claimed.client_id)

        self._publish_status()  # taken off the queue (spec 4.3: before execution_start)
        self.models.begin_prompt()
        try:
            result = self._run(claimed, emit)
            if result.status == "interrupted" and self._stopping.is_set():
                execution.requeue(self.context.database, prompt_id, attempt, self.name)
                self._publish_status()
                log.info("worker stopping: %s goes back to the queue", prompt_id)
                return
            state = {"success": PromptState.SUCCESS, "error": PromptState.ERROR,
                     "interrupted": PromptState.INTERRUPTED}[result.status]
            self._finish(claimed, state, result)
            self._publish_status()  # ComfyUI's order: the status broadcast, then the final executing
            emit("executing", {"node": None, "prompt_id": prompt_id})
        finally:
            self.models.end_prompt()
            with self._state_lock:
                self.info.current_prompt = None

    def _run(self, claimed, emit) -> ExecutionResult:
        try:
            return self.executor.execute(
                claimed.prompt_id, claimed.prompt, claimed.outputs_to_execute, claimed.extra_data,
                emit, self._check_interrupt,
            )
        except Exception as exception:  # noqa: BLE001 - a broken plan fails the prompt, not the worker
            log.exception("prompt %s failed outside any node", claimed.prompt_id)
            error = {
                "prompt_id": claimed.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": f"{exception}\n", "exception_type": type(exception).__name__,
                "traceback": traceback.format_tb(exception.__traceback__), "current_inputs": {},
                "current_outputs": list(claimed.prompt), "timestamp": now_ms(),
            }
            emit("execution_error", error)
            return ExecutionResult("error", {}, [["execution_error", error]], error)

    def _announce_lost(self, failed: list[workers.LostPrompt], status: bool = False) -> None:
        """Prompts that lost their workers too often ended in error: their clients hear it as from a
        worker, execution_error, the status broadcast, then the final executing."""
        for lost in failed:
            self.bus.publish("execution_error", lost.error, prompt_id=lost.prompt_id, client_id=lost.client_id,
                             own=False)
        if failed or status:
            self._publish_status()
        for lost in failed:
            self.bus.publish("executing", {"node": None, "prompt_id": lost.prompt_id},
                             prompt_id=lost.prompt_id, client_id=lost.client_id, own=False)

    def _publish_status(self) -> None:
        """The `status` broadcast, in order with this worker's events (counted by the bus's thread)."""
        self.bus.publish_status(lambda: history.queue_remaining(self.context.database))

    def _finish(self, claimed, state: PromptState, result: ExecutionResult) -> None:
        # The history entry must be written: retry through short database outages.
        for delay in (0, 0.5, 1, 2, 4, 8, 16):
            time.sleep(delay)
            try:
                execution.finish(self.context.database, claimed, self.name, state, result.outputs,
                                 result.messages, result.error)
                return
            except Exception:  # noqa: BLE001
                log.exception("could not record the end of %s; retrying", claimed.prompt_id)
        raise RuntimeError(f"could not record the end of {claimed.prompt_id}")
