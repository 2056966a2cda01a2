"""Which nodes a prompt runs, and in what order: the outputs and everything they link from."""

from __future__ import annotations

import heapq

from farm.graph.links import is_link


class PlanError(ValueError):
    """The prompt cannot be ordered (a link to a missing node, or a cycle)."""


def upstream(node: dict) -> list[str]:
    return [value[0] for value in node.get("inputs", {}).values() if is_link(value)]


def plan_execution(prompt: dict, outputs: list[str], cached: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Needed node ids in an order where each node follows the nodes it links from.

    Nodes in `cached` come from the execution cache: they are in the plan, but what they link
    from is not needed for them. Iterative (no recursion limit on deep graphs); among ready nodes
    the prompt's own order wins, so runs are deterministic.
    """
    needed: set[str] = set()
    stack = [str(output) for output in outputs]
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        if node_id not in prompt:
            raise PlanError(f"node {node_id!r} is linked but not in the prompt")
        needed.add(node_id)
        if node_id not in cached:
            stack.extend(upstream(prompt[node_id]))

    position = {node_id: index for index, node_id in enumerate(prompt)}
    waiting = {node_id: set() if node_id in cached else set(upstream(prompt[node_id])) for node_id in needed}
    dependents: dict[str, list[str]] = {node_id: [] for node_id in needed}
    for node_id, sources in waiting.items():
        for source in sources:
            dependents[source].append(node_id)
    ready = [(position[n], n) for n, sources in waiting.items() if not sources]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for dependent in dependents[node_id]:
            waiting[dependent].discard(node_id)
            if not waiting[dependent]:
                heapq.heappush(ready, (position[dependent], dependent))
    if len(order) != len(needed):
        raise PlanError("the prompt has a dependency cycle")
    return order
