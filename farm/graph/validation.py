"""Prompt validation with ComfyUI's rules and error shapes (spec comfyui-api.md §5).

Runs in the web process without torch. Nodes are visited once each, dependencies first, in an
iterative depth-first order, so graphs of any depth validate without recursion limits and a
static cycle is reported as `dependency_cycle` instead of crashing. Whatever the graph's shape,
no step walks it more than once (bench/validation_worst.py times the worst shapes): a cycle's
nodes are marked once each however many cycles pass through them, dependent_outputs come from
farm.graph.dependents rather than a walk per failing output, and what an error repeats (cycle
members, dependent outputs, node ids) is capped, so the answer grows with the prompt, not its square.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from typing import Any

from farm.graph import dependents, errors
from farm.graph.links import is_link
from farm.graph.types import types_compatible
from farm.nodes.base import ModelChoices, NodeEnvironment
from farm.nodes.registry import NodeRegistry


@dataclasses.dataclass
class Validation:
    """The outcome: the prompt to store (coerced in place), its valid outputs, or the error."""

    prompt: Any
    outputs: list[str]
    node_errors: dict
    error: dict | None = None
    # The model files the prompt loads, as "folder/relative path", sorted (placement needs them).
    needs: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def validate_prompt(
    prompt: Any,
    registry: NodeRegistry,
    env: NodeEnvironment,
    partial_execution_targets: list | None = None,
) -> Validation:
    if not isinstance(prompt, dict):
        return Validation(prompt, [], {}, errors.invalid_prompt("the prompt must be an object of nodes keyed by node id"))
    if len(prompt) > MAX_NODES:
        return Validation(prompt, [], {}, errors.invalid_prompt(
            f"the prompt has {len(prompt)} nodes; at most {MAX_NODES} are accepted"))
    for node_id, node in prompt.items():
        failure = _check_node_id(node_id) or _check_node_type(node_id, node, registry)
        if failure:
            return Validation(prompt, [], {}, failure)

    outputs = [node_id for node_id, node in prompt.items() if registry[node["class_type"]].OUTPUT_NODE]
    if partial_execution_targets is not None:
        targets = {str(target) for target in partial_execution_targets}
        outputs = [node_id for node_id in outputs if node_id in targets]
    if not outputs:
        return Validation(prompt, [], {}, errors.prompt_no_outputs())

    checker = _Checker(prompt, registry, env)
    good: list[str] = []
    failed_outputs: list[str] = []
    for output_id in outputs:
        checker.failed_so_far = len(failed_outputs)
        if checker.valid(output_id):
            good.append(output_id)
        else:
            failed_outputs.append(output_id)
    checker.record_dependent_outputs(failed_outputs)

    node_errors = {node_id: entry for node_id, entry in checker.node_errors.items() if entry["errors"]}
    if not good:
        lines = [
            f"{error['message']}: {error['details']}"
            for output_id in failed_outputs
            for error in checker.node_errors.get(output_id, {}).get("errors", [])
        ]
        return Validation(prompt, [], node_errors, errors.outputs_failed("\n".join(lines)))
    return Validation(prompt, good, node_errors, needs=sorted(checker.needs))


MAX_NODE_ID = 255  # an id is echoed in many errors (cycles, dependent_outputs): long ones would multiply
# Validation is linear, but its answer is not small: up to a few KB of errors per node (ComfyUI's
# input_config carries each input's options and tooltip). Twice the largest graph benchmarked.
MAX_NODES = 20_000


def _check_node_id(node_id: str) -> dict | None:
    if isinstance(node_id, str) and len(node_id) > MAX_NODE_ID:
        return errors.invalid_prompt(f"node id '{node_id[:40]}...' is longer than {MAX_NODE_ID} characters")
    return None


def _check_node_type(node_id: str, node: Any, registry: NodeRegistry) -> dict | None:
    if not isinstance(node, dict) or "class_type" not in node:
        return errors.missing_node_type(node_id, None, None)
    class_type = node["class_type"]
    title = node.get("_meta", {}).get("title") if isinstance(node.get("_meta"), dict) else None
    if not isinstance(class_type, str) or class_type not in registry:
        return errors.missing_node_type(node_id, class_type, title)
    if not isinstance(node.setdefault("inputs", {}), dict):
        return errors.invalid_prompt(f"the inputs of node '{node_id}' must be an object")
    return None


class _Checker:
    """Validates the nodes reachable from the outputs, each once, dependencies first."""

    def __init__(self, prompt: dict, registry: NodeRegistry, env: NodeEnvironment):
        self.prompt = prompt
        self.registry = registry
        self.env = env
        self.result: dict[str, bool] = {}
        self.node_errors: dict[str, dict] = {}
        self.exceptions: dict[str, tuple[str, str, list[str]]] = {}  # node id -> (type, message, traceback)
        self._schemas: dict[str, dict] = {}
        self._declared: dict[str, list[tuple[str, bool, list]]] = {}
        self._links: dict[str, list[tuple[str, Any]]] = {}
        self._labels: dict[str, str] = {}
        self._cycle_texts: dict[tuple[int, str], tuple[list[str], str]] = {}
        self.needs: set[str] = set()
        # Node on a reported cycle -> the lowest path index of a run of marked nodes ending at it.
        self._cycle_floor: dict[str, int] = {}
        # How many outputs had failed when each node_errors entry got its first error: an output
        # that failed before that did not see the error, and is not listed as depending on it.
        self.failed_so_far = 0
        self._errors_since: dict[str, int] = {}

    def schema(self, class_type: str) -> dict:
        if class_type not in self._schemas:
            self._schemas[class_type] = self.registry[class_type].input_types(self.env)
        return self._schemas[class_type]

    def add_error(self, node_id: str, error: dict) -> None:
        node = self.prompt.get(node_id)
        class_type = node.get("class_type") if isinstance(node, dict) else None
        entry = self.node_errors.setdefault(
            node_id, {"errors": [], "dependent_outputs": [], "class_type": class_type}
        )
        entry["errors"].append(error)
        self._errors_since.setdefault(node_id, self.failed_so_far)

    def declared_links(self, node_id: str) -> list[tuple[str, Any]]:
        """(input name, source id) for every declared input of `node_id` that is a link, as the
        node was submitted (listed once: the walks for checks, cycles and dependents share it)."""
        links = self._links.get(node_id)
        if links is None:
            node = self.prompt[node_id]
            inputs = node["inputs"]
            links = self._links[node_id] = [
                (name, inputs[name][0]) for name, _required, _config in self.declared(node["class_type"])
                if is_link(inputs.get(name), strict=False)]
        return links

    def valid(self, root: str) -> bool:
        # Iterative DFS: a node is checked after all of its (existing) upstream nodes.
        stack: list[tuple[str, bool]] = [(root, False)]
        on_path: list[str] = []  # the grey nodes, in order (for reporting a cycle)...
        position: dict[str, int] = {}  # ...and each one's index there, for constant-time lookups
        while stack:
            node_id, expanded = stack.pop()
            if expanded:
                del position[on_path.pop()]
                self.result[node_id] = self._check_guarded(node_id)
                continue
            if node_id in self.result:
                continue
            if node_id in position:
                continue  # reported by the cycle check below
            position[node_id] = len(on_path)
            on_path.append(node_id)
            stack.append((node_id, True))
            for _name, source in self.declared_links(node_id):
                if not isinstance(source, str) or source not in self.prompt:
                    continue
                # Before the memo check: a node already marked failed by one cycle can close another.
                if source in position:
                    self._report_cycle(on_path, position[source])
                    continue
                if source in self.result:
                    continue
                stack.append((source, False))
        if root in self.exceptions and not self._reported_exception(root):
            exception_type, message, trace = self.exceptions[root]
            self.add_error(root, errors.exception_during_validation(exception_type, message, trace))
        return self.result[root]

    def _check_guarded(self, node_id: str) -> bool:
        """A node's own checks; an exception in them (a custom validator, say) fails the node."""
        try:
            return self._check(node_id)
        except Exception as exception:  # noqa: BLE001 - reported in ComfyUI's error shape, not a 500
            self.exceptions[node_id] = (
                type(exception).__name__, str(exception), traceback.format_tb(exception.__traceback__))
            return False

    def _reported_exception(self, node_id: str) -> bool:
        return any(error["type"].startswith("exception_during")
                   for error in self.node_errors.get(node_id, {}).get("errors", []))

    def _report_cycle(self, on_path: list[str], start: int) -> None:
        """on_path[start:] is a cycle: each of its nodes fails, with this cycle as its error unless
        an earlier cycle already gave it one.

        Runs of nodes marked by earlier cycles are skipped whole (their floor is where the run
        begins, and it is still on the path below them), so a long path closed by many back
        edges costs each node one marking, not one per cycle.
        """
        fresh: list[str] = []
        index = len(on_path) - 1
        while index >= start:
            node_id = on_path[index]
            floor = self._cycle_floor.get(node_id)
            if floor is None:
                self._cycle_floor[node_id] = start
                self.result[node_id] = False
                fresh.append(node_id)
                index -= 1
            else:
                self._cycle_floor[node_id] = min(floor, start)
                index = floor - 1
        if fresh:
            shown, path, length = self._describe_cycle(on_path, start)
            for node_id in reversed(fresh):  # in path order, as the cycle reads
                self.add_error(node_id, errors.dependency_cycle(node_id, shown, path, length))

    def _describe_cycle(self, on_path: list[str], start: int) -> tuple[list[str], str, int]:
        """The cycle's first CYCLE_SHOWN nodes, its path text ("1 (ImageInvert) -> ... -> 1 (...)")
        and its length: every node of a long cycle carries this, so it must not carry all of it."""
        length = len(on_path) - start
        end = min(len(on_path), start + CYCLE_SHOWN)
        # The same node at the same place on the path means the same nodes below it: cycles
        # closed on one long path share their first nodes' text.
        key = (start, on_path[end - 1])
        cached = self._cycle_texts.get(key)
        if cached is None:
            shown = on_path[start:end]
            cached = self._cycle_texts[key] = (shown, " -> ".join(map(self._label, shown)))
        shown, text = cached
        more = f" -> ... {length - len(shown)} more nodes" if length > len(shown) else ""
        return shown, f"{text}{more} -> {self._label(shown[0])}", length

    def _label(self, node_id: str) -> str:
        label = self._labels.get(node_id)
        if label is None:
            label = self._labels[node_id] = f"{node_id} ({self.prompt[node_id]['class_type']})"
        return label

    def sources(self, node) -> list:
        """What `node` links from: node ids, and for a source id that is not a string (an error
        recorded under its str()) a 1-tuple of that str, a leaf: no node has that id."""
        if not isinstance(node, str) or node not in self.prompt:
            return []
        return [source if isinstance(source, str) else (str(source),) for _name, source in self.declared_links(node)]

    def record_dependent_outputs(self, failed_outputs: list[str]) -> None:
        """Lists each failed output under every node with errors it depends on (itself included)."""
        if not failed_outputs:
            return
        masks: dict[str, int] = {}
        # Without a cycle, the order the checks finished in (dependencies first) is a topological one.
        order = None if self._cycle_floor else self.result
        for node, mask in dependents.output_masks(failed_outputs, self.sources, order).items():
            key = node if isinstance(node, str) else node[0]
            if key in self.node_errors:
                masks[key] = masks.get(key, 0) | mask
        for key, mask in masks.items():
            since = self._errors_since[key]
            mask = mask >> since << since
            self.node_errors[key]["dependent_outputs"].extend(dependents.listed(mask, failed_outputs))

    def _check(self, node_id: str) -> bool:
        if self.result.get(node_id) is False:  # already failed as part of a cycle
            return False
        node = self.prompt[node_id]
        cls = self.registry[node["class_type"]]
        inputs = node["inputs"]
        ok = True
        for name, required, config in self.declared(node["class_type"]):
            if name not in inputs:
                if required:
                    self.add_error(node_id, errors.required_input_missing(name))
                    ok = False
                continue
            value = inputs[name]
            if isinstance(value, dict) and "__value__" in value:
                value = inputs[name] = value["__value__"]
            elif isinstance(value, list):
                ok = self._check_link(node_id, name, config, value) and ok
                continue
            ok = self._check_constant(node_id, cls, name, config, inputs) and ok
        return ok

    def declared(self, class_type: str) -> list[tuple[str, bool, list]]:
        """(name, required, input_config) of each declared input, worked out once per class.

        Errors report input_config as the pair [input_type, options] (spec §5.2), also for inputs
        declared without options, such as ["IMAGE"] or [[...choices]].
        """
        found = self._declared.get(class_type)
        if found is None:
            schema = self.schema(class_type)
            found = self._declared[class_type] = [
                (name, section == "required",
                 [declared[0], declared[1] if len(declared) > 1 and isinstance(declared[1], dict) else {}])
                for section in ("required", "optional") for name, declared in schema.get(section, {}).items()]
        return found

    def _check_link(self, node_id: str, name: str, config: list, value: list) -> bool:
        if len(value) != 2:
            self.add_error(node_id, errors.bad_linked_input(name, config, value))
            return False
        source, index = value
        source_node = self.prompt.get(source) if isinstance(source, str) else None
        if source_node is None:
            self.add_error(str(source), errors.inner_exception(
                name, config, value, "KeyError",
                f"node {_shown(source)} linked from input '{name}' of node '{node_id}' does not exist in the prompt",
            ))
            return False
        return_types = self.registry[source_node["class_type"]].RETURN_TYPES
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(return_types):
            self.add_error(source, errors.inner_exception(
                name, config, value, "IndexError",
                f"output index {_shown(index)} of node '{source}' ({source_node['class_type']}) does not exist: "
                f"it has {len(return_types)} output(s)",
            ))
            return False
        received = return_types[index]
        expected = config[0]
        if not types_compatible(received, expected):
            self.add_error(node_id, errors.return_type_mismatch(name, config, received, expected, value))
            return False
        if source in self.exceptions and not self._reported_exception(source):
            exception_type, message, trace = self.exceptions[source]
            self.add_error(source, errors.inner_exception(name, config, value, exception_type, message, trace))
        return self.result.get(source, False)

    def _check_constant(self, node_id: str, cls, name: str, config: list, inputs: dict) -> bool:
        expected = config[0]
        options = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
        value = inputs[name]
        if name in cls.CUSTOM_VALIDATED_INPUTS:
            message = cls.validate_input(self.env, name, value)
            if message is not None:
                self.add_error(node_id, errors.custom_validation_failed(name, message))
                return False
            return True
        caster = _CASTS.get(expected) if isinstance(expected, str) else None
        if caster is not None:
            try:
                cast = caster(value)
            except (TypeError, ValueError, OverflowError) as ex:
                self.add_error(node_id, errors.invalid_input_type(name, config, expected, value, ex))
                return False
            if expected == "FLOAT" and not math.isfinite(cast):
                # float("nan") and float("1e999") succeed, but JSONB and browsers refuse the result.
                self.add_error(node_id, errors.invalid_input_type(
                    name, config, expected, value, ValueError(f"{cast} is not a finite number")))
                return False
            value = inputs[name] = cast
        if "min" in options and _below(value, options["min"]):
            self.add_error(node_id, errors.value_smaller_than_min(name, config, value, options["min"]))
            return False
        if "max" in options and _below(options["max"], value):
            self.add_error(node_id, errors.value_bigger_than_max(name, config, value, options["max"]))
            return False
        choices = expected if isinstance(expected, list) else None
        if expected == "COMBO" and isinstance(options.get("options"), list) and not options.get("remote"):
            choices = options["options"]  # the V3 form, checked as newer ComfyUI does
        if choices is not None:
            values = value if options.get("multiselect") and isinstance(value, list) else [value]
            model_choices = isinstance(choices, ModelChoices)
            for item in values:
                if item not in choices and not (
                        model_choices and isinstance(item, str) and self.env.model_file_appeared(choices.folder, item)):
                    self.add_error(node_id, errors.value_not_in_list(name, config, item, choices))
                    return False
                if model_choices:
                    self.needs.add(f"{choices.folder}/{item}")
        return True


CYCLE_SHOWN = 10


def _shown(value, limit: int = 200) -> str:
    """repr(value) for a message, cut: the value itself is in extra_info already, once is enough."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _below(a, b) -> bool:
    try:
        return a < b
    except TypeError:
        return False


_CASTS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
