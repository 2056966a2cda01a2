"""Runs a validated prompt: the needed nodes in dependency order, outputs passed along links.

Invariants: only the outputs to execute and their dependencies run; a node runs after every
node it links from; the first node exception stops the prompt (ComfyUI's rule) and becomes an
`execution_error` with the node, class, exception and traceback; an interrupt is observed before
each node and at every progress report and becomes `execution_interrupted`. Progress events and
previews are farm.graph.progress's; previews only when the worker's preview method or the
prompt's `extra_data.preview_method` asks for them.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Callable

from farm.graph.cache import ExecutionCache
from farm.graph.links import is_link
from farm.graph.plan import plan_execution
from farm.graph.progress import ProgressReporter, preview_method
from farm.nodes.base import Interrupted, NodeEnvironment, RunContext
from farm.nodes.registry import NodeRegistry

# The events ComfyUI records in a history entry's status messages.
HISTORY_EVENTS = ("execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted")

Emit = Callable[[str, dict], None]

OUT_OF_MEMORY_TIP = (
    "This error means the worker ran out of GPU memory for this prompt. It freed its caches and "
    "goes on with the next prompt; try a smaller resolution or batch size.\n"
)


@dataclasses.dataclass
class ExecutionResult:
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict]
    messages: list[list]
    error: dict | None = None

    @property
    def completed(self) -> bool:
        return self.status == "success"


def now_ms() -> int:
    return int(time.time() * 1000)


def _qualified_name(exception: BaseException) -> str:
    cls = type(exception)
    if getattr(cls, "exception_type", None):
        return cls.exception_type
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _describe(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool, str, type(None))) else str(value)


class GraphExecutor:
    """Executes prompts for one worker; `emit` receives every event in ComfyUI's order."""

    def __init__(self, registry: NodeRegistry, storage, env: NodeEnvironment | None = None, *,
                 models=None, cache: ExecutionCache | None = None, on_out_of_memory: Callable[[], None] | None = None,
                 preview_method: str = "none"):
        self.preview_method = preview_method
        self.registry = registry
        self.storage = storage
        self.env = env or NodeEnvironment(storage)
        self.models = models
        self.cache = cache
        self.on_out_of_memory = on_out_of_memory
        self.on_node: Callable[[str, float], None] | None = None  # (class_type, seconds) of each node run

    def execute(
        self,
        prompt_id: str,
        prompt: dict,
        outputs_to_execute: list[str],
        extra_data: dict,
        emit: Emit,
        check_interrupt: Callable[[], None] = lambda: None,
        storage=None,
        env: NodeEnvironment | None = None,
        team: str | None = None,
        group=None,
    ) -> ExecutionResult:
        """Run the prompt; `storage` replaces the executor's for this run's nodes (a worker passes
        one that journals what the attempt writes), `env` and `team` those of the prompt's team
        (its input files; cached outputs are never shared between teams). With `group` (a
        farm.graph.group.CoalescedGroup) the prompt runs as a member of a coalesced group: its
        sampler meets the others', and the caller has started the execution cache for all of them."""
        try:
            return self._execute(prompt_id, prompt, outputs_to_execute, extra_data, emit, check_interrupt,
                                 storage or self.storage, env, team, group)
        finally:
            if group is not None:
                group.leave(prompt_id)

    def _execute(self, prompt_id, prompt, outputs_to_execute, extra_data, emit, check_interrupt, storage, env, team,
                 group) -> ExecutionResult:
        messages: list[list] = []

        def send(event: str, data: dict) -> None:
            if event in HISTORY_EVENTS:
                messages.append([event, data])
            emit(event, data)

        send("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()})
        signatures = self.cache.signatures(prompt, env, team) if self.cache is not None else {}
        if self.cache is None:
            cached = []
        else:
            cached = self.cache.cached_nodes(signatures) if group is not None else self.cache.start_prompt(signatures)
        send("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": now_ms()})

        cached_set = set(cached)
        order = plan_execution(prompt, outputs_to_execute, cached_set)
        progress = ProgressReporter(send, prompt_id, preview_method(extra_data, self.preview_method) != "none")
        values: dict[str, tuple] = {}
        outputs: dict[str, dict] = {}
        executed: list[str] = []
        for node_id in order:
            node = prompt[node_id]
            class_type = node["class_type"]
            inputs: dict = {}
            hit = self.cache.get(signatures[node_id]) if node_id in cached_set else None
            if hit is not None:
                values[node_id] = hit.values
                if hit.ui is not None:
                    outputs[node_id] = hit.ui
                if node_id in outputs_to_execute:  # cached outputs still report their UI
                    send("executed", {"node": node_id, "display_node": node_id, "output": hit.ui,
                                      "prompt_id": prompt_id})
                    progress.finish(node_id)
                continue
            try:
                check_interrupt()
                progress.start(node_id)
                send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                cls = self.registry[class_type]
                inputs = self._gather_inputs(cls, node_id, node, values, prompt, extra_data)
                ctx = RunContext(
                    prompt_id=prompt_id,
                    node_id=node_id,
                    storage=storage,
                    check_interrupt=check_interrupt,
                    report_progress=lambda value, maximum, _node=node_id: self._progress(
                        progress, check_interrupt, _node, value, maximum),
                    models=self.models,
                    preview=progress.offer_preview,
                    group=group,
                )
                node_started = time.perf_counter()
                result = cls().run(ctx, **inputs)
                if self.on_node is not None:
                    self.on_node(class_type, time.perf_counter() - node_started)
            except Interrupted:
                progress.flush()
                send("execution_interrupted", {
                    "prompt_id": prompt_id, "node_id": node_id, "node_type": class_type,
                    "executed": list(executed), "timestamp": now_ms(),
                })
                return ExecutionResult("interrupted", outputs, messages)
            except Exception as exception:  # noqa: BLE001 - any node failure fails the prompt, not the worker
                out_of_memory = type(exception).__name__ == "OutOfMemoryError"
                if out_of_memory and self.on_out_of_memory is not None:
                    self.on_out_of_memory()  # free every cache so the next prompt starts clean
                payload = self._error_payload(prompt_id, node_id, class_type, executed, exception, inputs, prompt,
                                              OUT_OF_MEMORY_TIP if out_of_memory else "")
                progress.flush()
                send("execution_error", payload)
                return ExecutionResult("error", outputs, messages, payload)
            values[node_id] = tuple(result.values)
            executed.append(node_id)
            if self.cache is not None:
                self.cache.put(signatures[node_id], values[node_id], result.ui)
            if result.ui is not None:
                outputs[node_id] = result.ui
                send("executed", {"node": node_id, "display_node": node_id, "output": result.ui, "prompt_id": prompt_id})
            progress.finish(node_id)
        progress.flush()
        send("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()})
        return ExecutionResult("success", outputs, messages)

    @staticmethod
    def _progress(progress: ProgressReporter, check_interrupt, node_id, value, maximum) -> None:
        progress.report(node_id, value, maximum)
        check_interrupt()

    def _gather_inputs(self, cls, node_id: str, node: dict, values: dict, prompt: dict, extra_data: dict) -> dict:
        schema = cls.input_types(self.env)
        declared = {**schema.get("required", {}), **schema.get("optional", {})}
        inputs = {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                source, index = value[0], int(value[1])
                inputs[name] = values[source][index]
            elif name in declared:
                inputs[name] = value
        hidden_values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_data.get("extra_pnginfo"), "UNIQUE_ID": node_id}
        for name, kind in schema.get("hidden", {}).items():
            kind = kind[0] if isinstance(kind, list) else kind
            if kind in hidden_values:
                inputs[name] = hidden_values[kind]
        return inputs

    @staticmethod
    def _error_payload(prompt_id, node_id, class_type, executed, exception, inputs, prompt, tip="") -> dict:
        return {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": class_type,
            "executed": list(executed),
            "exception_message": f"{exception}\n{tip}",
            "exception_type": _qualified_name(exception),
            "traceback": traceback.format_tb(exception.__traceback__),
            "current_inputs": {
                name: [_describe(value)] for name, value in inputs.items() if name not in ("prompt", "extra_pnginfo")
            },
            "current_outputs": list(prompt),
            "timestamp": now_ms(),
        }
