"""Which failing outputs each node depends on (node_errors' dependent_outputs), in linear time.

An output depends on every node it links from, directly or not. Walking the graph once per
failing output costs outputs x nodes (seconds for a few thousand outputs over a long chain);
here each node's failing outputs are one bit mask, pushed once from consumers to sources in an
order where every consumer comes first: the strongly connected components (a cycle collapsed to
one) in reverse topological order. Lists are cut at MAX_LISTED, so thousands of outputs over
thousands of failing nodes cannot make an answer of outputs x nodes entries.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable

MAX_LISTED = 100


def output_masks(outputs: list, sources: Callable[[Hashable], Iterable],
                 acyclic_order: Iterable | None = None) -> dict[Hashable, int]:
    """For every node reachable from `outputs` (by `sources`): bit i set when outputs[i] depends on it.

    `acyclic_order`, when the caller knows the graph has no cycle: every node the outputs reach,
    except sources that are leaves, each after its sources (a depth-first finishing order). Then
    no components are needed.
    """
    if len(outputs) == 1:  # the usual case: what the one output reaches, cycles or not
        reached, stack = {}, [outputs[0]]
        while stack:
            node = stack.pop()
            if node not in reached:
                reached[node] = 1
                stack.extend(sources(node))
        return reached
    if acyclic_order is not None:
        masks = {output: 1 << bit for bit, output in enumerate(outputs)}
        for node in reversed(list(acyclic_order)):  # consumers before their sources
            mask = masks.get(node)
            if mask:
                for source in sources(node):
                    masks[source] = masks.get(source, 0) | mask
        return masks
    successors: dict[Hashable, list] = {}

    def listed_sources(node):
        found = successors.get(node)
        if found is None:
            found = successors[node] = list(sources(node))
        return found

    components = _components(outputs, listed_sources)
    component_of = {node: index for index, members in enumerate(components) for node in members}
    masks = [0] * len(components)
    for bit, output in enumerate(outputs):
        masks[component_of[output]] |= 1 << bit
    for index in range(len(components) - 1, -1, -1):  # consumers before their sources
        mask = masks[index]
        if mask:
            for node in components[index]:
                for source in successors[node]:
                    target = component_of[source]
                    if target != index:
                        masks[target] |= mask
    return {node: masks[index] for node, index in component_of.items()}


def listed(mask: int, outputs: list, limit: int = MAX_LISTED) -> list:
    """The outputs whose bits are set in `mask`, in their order, at most `limit` of them."""
    bits = bin(mask)[:1:-1]  # lowest bit first; one conversion, not one big-int operation per output
    found, bit = [], bits.find("1")
    while bit >= 0 and len(found) < limit:
        found.append(outputs[bit])
        bit = bits.find("1", bit + 1)
    return found


def _components(roots: Iterable, successors: Callable[[Hashable], list]) -> list[list]:
    """Tarjan's strongly connected components of what `roots` reach, iteratively (graphs of any
    depth); each component comes after every component it reaches."""
    index: dict[Hashable, int] = {}
    low: dict[Hashable, int] = {}
    stack: list = []
    on_stack: set = set()
    components: list[list] = []
    for root in roots:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors(root)))]
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors(child))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    components.append(members)
    return components
