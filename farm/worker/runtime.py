"""What a worker process does: register, stay live, and run the prompts sent to it.

A prompt runs only after this worker claimed it for the attempt in the message; its events go
to the event bus as they happen, except those that end it for the client (execution_success,
_error, _interrupted, the status and the final `executing {node: null}`): they are sent only once
the history entry is written. A stale attempt (its prompt was taken back) sends nothing final.

Stopping (SIGTERM) drains: the running prompt may finish within `stop_grace_seconds`; past it,
the prompt is interrupted and put back in the queue without a word to its client, and the worker
exits. A prompt past `prompt_timeout_seconds` is interrupted and ends in error (Timeout); if its
node does not stop within the kill grace, the watchdog records the timeout itself and ends the
process (its supervisor starts it again).
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

from farm.attempt_outputs import AttemptOutputs, discard_attempts
from farm.engine.compiled import from_settings as compiled_unets
from farm.engine.model_cache import ModelCache
from farm.events import EventBus
from farm.graph.cache import ExecutionCache
from farm.graph.executor import ExecutionResult, GraphExecutor, now_ms
from farm.metrics import serve_worker_metrics, worker_metrics
from farm.models import LocalModelInventory, inventory
from farm.nodes.base import Interrupted, PromptTimeout
from farm.queue import placement
from farm.queue.celery_app import worker_queue_name
from farm.queue.sender import CelerySender
from farm.services import execution, history, reaping, workers
from farm.services.context import make_context
from farm.services.webhooks import PromptHooks
from farm.worker.coalescing import GroupCapacity
from farm.worker.device import device_report
from farm.worker.liveness import Heartbeat, Reporter
from farm.worker.prompt_end import PromptEnd
from farm.worker.watchdog import Watchdog

log = logging.getLogger(__name__)
PRELOAD_COMPILE_SECONDS = 900.0  # the most a start waits for a preloaded model's remembered compiles

# The events that end a prompt for its client: held until its history entry is written.
FINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


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
        self.hooks = PromptHooks(self.context.teams)  # who wants each prompt's end (webhook outbox)
        self.metrics = worker_metrics()
        self.executor.on_node = lambda class_type, seconds: self.metrics.node.labels(class_type).observe(seconds)
        self.models.on_load = lambda kind, seconds: (self.metrics.model_loads.labels(kind).inc(),
                                                     self.metrics.model_load_seconds.labels(kind).observe(seconds))
        self.models.on_hit = lambda kind: self.metrics.model_hits.labels(kind).inc()
        self.context.dispatcher.on_decision = lambda outcome: self.metrics.decisions.labels(outcome).inc()
        self.executor.preview_method = settings.preview_method
        self.info = workers.WorkerInfo(
            name=name, session=uuid.uuid4().hex, queue=worker_queue_name(name), host=socket.gethostname(),
            pid=os.getpid(), gpu_index=gpu, device_name="", device_type="", version=settings.version,
            python_version=sys.version, tags=list(settings.worker_tags),
        )
        self.reaper = reaping.Reaper(self.context.database, settings, self.bus, self._count_queue, self._dispatch_all,
                                     storage=self.context.storage)
        self.heartbeat = Heartbeat(settings, self.info, self._presumed_dead)
        self.reporter = Reporter(settings, self.info, self.context.database, self._refresh_info, self._tick)
        self._stopping = threading.Event()  # SIGTERM: take no more prompts
        self._abandon = threading.Event()  # past the stop grace: put the running prompt back
        self.ends = PromptEnd(name, settings, self.context, self.bus, self.hooks, self.metrics,
                              stopping=self._stopping, abandon=self._abandon, capabilities=self._capabilities,
                              publish_status=self._publish_status)
        self._interrupt = threading.Event()
        # Interrupts can arrive before the prompt starts here (it was only dispatched): remember them.
        self._interrupt_requests: collections.deque[str] = collections.deque(maxlen=1024)
        self._state_lock = threading.Lock()
        self._execution_lock = threading.Lock()
        self._pending_free = (False, False)
        self._running: execution.ClaimedPrompt | None = None
        # The interrupt flags of a coalesced group's members while one runs (prompt_id -> event).
        self._group_interrupts: dict[str, threading.Event] = {}
        self.capacity = GroupCapacity(settings, self.models.device)
        self._files: frozenset[str] = frozenset()  # the model files as "folder/path" (placement's form)
        self._deadline: float | None = None  # monotonic time the running prompt times out at

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._preload()  # before registering: no prompt is sent here until the models are in
        self._refresh_info(True)
        self.bus.forget_running([self.name])  # whatever this worker's previous life was running
        failed = workers.register(self.context.database, self.info, self.settings)
        for lost in failed:
            discard_attempts(self.context.storage, lost.prompt_id)
        reaping.announce_lost(self.bus, failed, self._count_queue)
        self.reporter.written()
        log.info("worker %s registered (%s)", self.name, self.info.device_name)
        self.heartbeat.start()
        self.reporter.start()
        if self.settings.prompt_timeout_seconds:
            Watchdog(self).start()
        if self.settings.worker_metrics_port:
            port = self.settings.worker_metrics_port + (self.info.gpu_index or 0)
            serve_worker_metrics(port, self.settings.worker_metrics_addr)
            log.info("worker %s metrics on http://%s:%d/metrics", self.name, self.settings.worker_metrics_addr, port)
        self.context.warm_up()
        gc.collect()
        gc.freeze()  # start-up objects (torch, Celery) never need collecting: keep full collections short
        self._dispatch_self()

    def _preload(self) -> None:
        """Load the FARM_PRELOAD checkpoints (names checked by the CLI) into the model cache."""
        for name in self.settings.preload:
            path = self.settings.models_dir / "checkpoints" / name
            started = time.perf_counter()
            try:
                model = self.models.checkpoint(str(path))[0]
            except Exception:  # noqa: BLE001 - a model that cannot load fails its prompts, said then
                log.exception("worker %s could not preload %s", self.name, name)
                continue
            seconds = time.perf_counter() - started
            megabytes = path.stat().st_size / 1e6
            log.info("worker %s preloaded %s: %.0f MB in %.2f s (%.0f MB/s)", self.name, name, megabytes, seconds,
                     megabytes / max(seconds, 1e-9))
            if self.models.compiler is not None and getattr(model, "compiled", None) is not None:
                # the shapes it was compiled for before, from the persisted caches: compiled from the first prompt
                started = time.perf_counter()
                ready = self.models.compiler.warm((model.key, model.loras), model.unet,
                                                  timeout=PRELOAD_COMPILE_SECONDS)
                if ready:
                    log.info("worker %s compiled %d remembered shape(s) of %s in %.1f s", self.name, ready, name,
                             time.perf_counter() - started)

    def request_stop(self) -> None:
        """SIGTERM: finish the running prompt within the grace, take no more."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("worker %s stopping: the running prompt may finish within %.0f s", self.name,
                 self.settings.stop_grace_seconds)
        timer = threading.Timer(self.settings.stop_grace_seconds, self._abandon.set)
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        self._stopping.set()
        self._abandon.set()
        self.reporter.stop()
        self.heartbeat.stop()
        workers.deregister(self.context.database, self.info)
        self.bus.forget_running([self.name])
        self.bus.close()
        self.context.database.dispose()
        log.info("worker %s deregistered", self.name)

    def stopped(self, wait: float) -> bool:
        """Wait up to `wait` seconds; whether the worker is past stopping (its prompt abandoned)."""
        return self._abandon.wait(wait)

    def running(self) -> tuple[execution.ClaimedPrompt | None, float | None]:
        """The prompt running now and the monotonic time it times out at."""
        with self._state_lock:
            return self._running, self._deadline

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt `prompt_id` if it runs here now, or as soon as it starts here."""
        with self._state_lock:
            self._interrupt_requests.append(prompt_id)
            if self.info.current_prompt == prompt_id:
                self._interrupt.set()
            if prompt_id in self._group_interrupts:
                self._group_interrupts[prompt_id].set()
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

    # liveness and reports (their own threads) ------------------------------------------------
    def _refresh_info(self, walk_models: bool) -> None:
        for key, value in device_report().items():
            setattr(self.info, key, value)
        self.info.loaded_models = self.models.report()  # a snapshot: never waits for a load
        if walk_models:
            found = inventory(self.settings.models_dir)
            if found != self.info.model_files:
                self.info.model_files = found
                # What take_next matches (model files and tags), built once per change.
                self._files = placement.capabilities(found, self.settings.worker_tags)

    def _presumed_dead(self, database) -> None:
        """The heartbeat found this worker reaped: its running attempt was taken back (and may run
        elsewhere now), so stop it quietly and be live again."""
        with self._state_lock:
            stale = self.info.current_prompt
            if stale is not None:
                self._interrupt.set()
                for event in self._group_interrupts.values():
                    event.set()
        log.warning("worker %s was presumed dead; registering again%s", self.name,
                    f" (its attempt of {stale} is stale and stops)" if stale else "")
        workers.rejoin(database, self.info)
        self.reporter.written()

    def _tick(self) -> None:
        self.reaper.run_once()
        if not self._stopping.is_set():
            self.context.dispatcher.dispatch()

    def _count_queue(self) -> int:
        return history.queue_remaining(self.context.database)

    def _dispatch_all(self) -> None:
        self.context.dispatcher.dispatch()

    def _dispatch_self(self) -> None:
        if not self._stopping.is_set():
            self.context.dispatcher.dispatch(only=self.name, loaded=placement.loaded_checkpoints(self.models.report()))

    # prompts --------------------------------------------------------------------------------
    def _check_interrupt(self, flag: threading.Event | None = None) -> None:
        """Raise Interrupted (or PromptTimeout) when the running prompt must stop; `flag` is a
        group member's own interrupt flag (default: the single running prompt's)."""
        flag = flag or self._interrupt
        if self._abandon.is_set():
            raise Interrupted()
        if flag.is_set():
            flag.clear()
            raise Interrupted()
        deadline = self._deadline
        if deadline is not None and time.monotonic() > deadline:
            raise PromptTimeout(f"the prompt ran longer than the farm's limit of "
                                f"{self.settings.prompt_timeout_seconds:g} s (FARM_PROMPT_TIMEOUT_SECONDS)")

    def execute(self, prompt_id: str, attempt: int) -> None:
        """The message for (prompt_id, attempt): claim and run it, then the prompts this worker
        takes next as it records each one, until there is none for it."""
        with self._execution_lock:
            claimed = None if self._stopping.is_set() else execution.claim(
                self.context.database, prompt_id, attempt, self.name)
            if claimed is None and not self._stopping.is_set():
                log.info("dropping stale message for %s attempt %s", prompt_id, attempt)
            # (Not claimed while stopping: the row goes back to the queue when this worker deregisters.)
            while claimed is not None:
                claimed = self._execute(claimed)
                self._apply_free()
        self._dispatch_self()

    def _execute(self, claimed: execution.ClaimedPrompt) -> execution.ClaimedPrompt | None:
        """Run one claimed prompt (with the prompts it coalesces with, if any) and record its end;
        the next prompt it took, if any."""
        companions = self._companions(claimed)
        if companions:
            return self._execute_group([claimed, *companions])
        prompt_id, attempt = claimed.prompt_id, claimed.attempt
        discard_attempts(self.context.storage, prompt_id, keep=attempt)  # what killed attempts left
        outputs = AttemptOutputs(self.context.storage, prompt_id, attempt, claimed.team)
        with self._state_lock:
            self.info.current_prompt = prompt_id
            self._running = claimed
            # ComfyUI clears the flag when a prompt starts: an interrupt never carries over.
            self._interrupt.clear()
            if prompt_id in self._interrupt_requests:
                self._interrupt.set()
            timeout = self.settings.prompt_timeout_seconds
            self._deadline = time.monotonic() + timeout if timeout else None
        held: list[tuple[str, dict]] = []
        emit = self._emitter(claimed, held)
        self._publish_status()  # taken off the queue (spec 4.3: before execution_start)
        if claimed.queue_wait_seconds is not None:
            self.metrics.queue_wait.labels(claimed.team).observe(claimed.queue_wait_seconds)
        self.models.begin_prompt()
        try:
            started = time.perf_counter()
            result = self._run(claimed, emit, outputs)
            self.metrics.execution.labels(claimed.team, result.status).observe(time.perf_counter() - started)
            self._deadline = None  # ended: only recording is left, the watchdog has nothing to stop
            return self.ends.settle(claimed, result, held, outputs)
        finally:
            self.models.end_prompt()
            self._clear_running()

    def _emitter(self, claimed: execution.ClaimedPrompt, held: list[tuple[str, dict]]):
        """The prompt's event sink: published at once, but its final events held until its end is recorded."""
        def emit(event: str, data: dict) -> None:
            if event in FINAL_EVENTS:
                held.append((event, data))
            else:
                self.bus.publish(event, data, prompt_id=claimed.prompt_id, client_id=claimed.client_id,
                                 team=claimed.team)
        return emit

    # coalesced groups ---------------------------------------------------------------------------
    def _companions(self, claimed: execution.ClaimedPrompt) -> list[execution.ClaimedPrompt]:
        """The prompts to sample in one batch with `claimed`, claimed for this worker; [] to run it alone.
        With some found but fewer than the worker holds, it waits FARM_COALESCE_WAIT_MS once for more
        (a client still submitting its sweep); a prompt with nothing to group with never waits."""
        room = self.capacity.limit() - 1
        if room <= 0 or claimed.coalesce_key is None or self._stopping.is_set():
            return []
        loaded = placement.loaded_checkpoints(self.models.report())
        found = execution.claim_companions(self.context.database, self.context.dispatcher, self.name, self._files,
                                           loaded, claimed, room)
        if found and len(found) < room and self.settings.coalesce_wait_ms > 0:
            time.sleep(self.settings.coalesce_wait_ms / 1000)
            found += execution.claim_companions(self.context.database, self.context.dispatcher, self.name,
                                                self._files, loaded, claimed, room - len(found))
        return found

    def _execute_group(self, members: list[execution.ClaimedPrompt]) -> execution.ClaimedPrompt | None:
        """Run a coalesced group: each member through the executor in a thread of its own, meeting
        at the sampler (farm.graph.group); then record each member's end in order. The next prompt
        this worker takes comes with the last end recorded (before it, the worker still holds some)."""
        from concurrent.futures import ThreadPoolExecutor

        from farm.graph.group import CoalescedGroup

        ids = [member.prompt_id for member in members]
        group = CoalescedGroup(ids, mode=self.capacity.mode)
        outputs, held = {}, {pid: [] for pid in ids}
        for member in members:
            discard_attempts(self.context.storage, member.prompt_id, keep=member.attempt)
            outputs[member.prompt_id] = AttemptOutputs(self.context.storage, member.prompt_id, member.attempt,
                                                       member.team)
        flags = {pid: threading.Event() for pid in ids}
        with self._state_lock:
            self.info.current_prompt = ids[0]
            self._running = members[0]
            self._interrupt.clear()
            for pid in ids:
                if pid in self._interrupt_requests:
                    flags[pid].set()
            self._group_interrupts = flags
            timeout = self.settings.prompt_timeout_seconds
            self._deadline = time.monotonic() + timeout if timeout else None
        log.info("worker %s samples %d prompts as one group: %s", self.name, len(members), ", ".join(ids))
        self._publish_status()
        for member in members:
            if member.queue_wait_seconds is not None:
                self.metrics.queue_wait.labels(member.team).observe(member.queue_wait_seconds)
        # The execution cache starts once for the whole group (a member's start would drop another's nodes).
        signatures = {}
        for member in members:
            found = self.execution_cache.signatures(member.prompt, self.context.node_env_for(member.team), member.team)
            signatures.update({f"{member.prompt_id}/{node}": value for node, value in found.items()})
        self.execution_cache.start_prompt(signatures)
        self.models.begin_prompt()
        self.capacity.begin()
        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(len(members), thread_name_prefix="farm-group") as pool:
                futures = [pool.submit(self._run, member, self._emitter(member, held[member.prompt_id]),
                                       outputs[member.prompt_id], group,
                                       lambda flag=flags[member.prompt_id]: self._check_interrupt(flag))
                           for member in members]
                results = [future.result() for future in futures]
            self.capacity.end(max(group.batches.get("sample", []), default=0))
            seconds = time.perf_counter() - started
            self._deadline = None
            following = None
            for member, result in zip(members, results):
                self.metrics.execution.labels(member.team, result.status).observe(seconds)
                following = self.ends.settle(member, result, held[member.prompt_id], outputs[member.prompt_id]) \
                    or following
            return following
        finally:
            self.models.end_prompt()
            self._clear_running()

    def _clear_running(self) -> None:
        with self._state_lock:
            self.info.current_prompt = None
            self._running = None
            self._deadline = None
            self._group_interrupts = {}

    def _run(self, claimed, emit, outputs: AttemptOutputs, group=None, check_interrupt=None) -> ExecutionResult:
        try:
            return self.executor.execute(
                claimed.prompt_id, claimed.prompt, claimed.outputs_to_execute, claimed.extra_data,
                emit, check_interrupt or self._check_interrupt, storage=outputs,
                env=self.context.node_env_for(claimed.team), team=claimed.team, group=group,
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

    def _capabilities(self) -> tuple[frozenset[str], frozenset[str]]:
        """The model files (and tags) placement matches, and the loaded checkpoints, as of now."""
        return self._files, placement.loaded_checkpoints(self.models.report())

    def _publish_status(self) -> None:
        """The `status` broadcast, in order with this worker's events (counted by the bus's thread)."""
        self.bus.publish_status(self._count_queue)
