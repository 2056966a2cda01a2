"""plan_execution: which nodes a prompt runs and in what order (spec comfyui-api.md §7.2, §2.1)."""

from __future__ import annotations

import pytest

from farm.graph.plan import PlanError, plan_execution


def node(*sources, **constants):
    """A node linking from `sources` (ids, output 0) on inputs in0, in1, ... plus constant inputs."""
    inputs = {f"in{index}": [source, 0] for index, source in enumerate(sources)}
    return {"class_type": "Any", "inputs": {**inputs, **constants}}


ORDERS = [
    pytest.param({"1": node(), "2": node("1"), "3": node("2")}, ["3"], ["1", "2", "3"], id="chain"),
    pytest.param({"3": node("2"), "2": node("1"), "1": node()}, ["3"], ["1", "2", "3"],
                 id="chain-listed-backwards"),
    # Among ready nodes the prompt's own order wins (not numeric or string order of the ids).
    pytest.param({"9": node("5"), "5": node("4", "3"), "4": node(), "3": node()}, ["9"], ["4", "3", "5", "9"],
                 id="prompt-order-among-ready"),
    pytest.param({"b": node(), "a": node(), "10": node("a", "b"), "2": node("b")}, ["10", "2"],
                 ["b", "a", "10", "2"], id="prompt-order-between-outputs"),
    pytest.param({"1": node(), "2": node("1"), "3": node("1"), "4": node("2", "3")}, ["4"], ["1", "2", "3", "4"],
                 id="diamond-shared-node-once"),
    pytest.param({"out": node("late"), "early": node(), "late": node("early")}, ["out"], ["early", "late", "out"],
                 id="dependency-before-prompt-order"),
    # Only the outputs asked for and what they link from run.
    pytest.param({"1": node(), "2": node("1"), "3": node(), "4": node("3"), "5": node("1")}, ["2"], ["1", "2"],
                 id="unconnected-branch-not-planned"),
    pytest.param({"1": node(), "2": node("1"), "3": node("1")}, ["3"], ["1", "3"],
                 id="other-output-not-planned"),
    pytest.param({"1": node(), "2": node("1")}, [2], ["1", "2"], id="int-output-id"),
    pytest.param({"1": node(), "2": node("1"), "3": node("2")}, ["2", "3", "2"], ["1", "2", "3"],
                 id="repeated-outputs-once"),
    pytest.param({"12:5": node(), "KSampler.0": node("12:5"), "out/9": node("KSampler.0")}, ["out/9"],
                 ["12:5", "KSampler.0", "out/9"], id="string-node-ids"),
    # Execution follows only [str, int|float] pairs; any other list is a constant (spec §2.1).
    pytest.param({"1": node(), "2": {"class_type": "Any", "inputs": {
        "a": [1, 0], "b": ["1", 0, 0], "c": ["1"], "d": ["404", "0"], "e": ["404", True], "f": {"x": ["404", 0]}}}},
        ["2"], ["2"], id="non-links-not-followed"),
    pytest.param({"1": node(), "2": {"class_type": "Any", "inputs": {"image": ["1", 0.0]}}}, ["2"], ["1", "2"],
                 id="float-index-is-a-link"),
    # Undeclared linked inputs still run upstream (they are passed to the node at execution).
    pytest.param({"1": node(), "2": {"class_type": "Any", "inputs": {"undeclared_extra": ["1", 0]}}}, ["2"],
                 ["1", "2"], id="any-linked-input-is-a-dependency"),
    # A cycle no output depends on is not planned, so it is not an error.
    pytest.param({"1": node(), "2": node("1"), "3": node("4"), "4": node("3")}, ["2"], ["1", "2"],
                 id="unreached-cycle-ignored"),
    pytest.param({"1": node()}, [], [], id="no-outputs"),
]


@pytest.mark.parametrize("prompt, outputs, order", ORDERS)
def test_plan_order(prompt, outputs, order):
    assert plan_execution(prompt, outputs) == order


def test_every_node_follows_the_nodes_it_links_from():
    prompt = {str(i): node(*[str(j) for j in range(i) if (i * 7 + j) % 5 == 0]) for i in range(60)}
    order = plan_execution(prompt, ["59", "40", "13"])
    position = {node_id: index for index, node_id in enumerate(order)}
    assert len(order) == len(set(order))
    for node_id in order:
        for value in prompt[node_id]["inputs"].values():
            assert position[value[0]] < position[node_id]


@pytest.mark.parametrize("backwards", [False, True], ids=["forwards", "backwards"])
def test_long_chain_is_planned_without_recursion(backwards):
    ids = [str(i) for i in range(2000)]
    prompt = {ids[0]: node(), **{ids[i]: node(ids[i - 1]) for i in range(1, len(ids))}}
    if backwards:
        prompt = dict(reversed(prompt.items()))
    assert plan_execution(prompt, [ids[-1]]) == ids


ERRORS = [
    pytest.param({"1": node("404")}, ["1"], "node '404' is linked but not in the prompt", id="missing-linked-node"),
    pytest.param({"1": node(), "2": node("1", "gone"), "3": node("2")}, ["3"],
                 "node 'gone' is linked but not in the prompt", id="missing-node-deep"),
    pytest.param({"1": node()}, ["9"], "node '9' is linked but not in the prompt", id="missing-output-node"),
    pytest.param({"1": node("2"), "2": node("1"), "3": node("1")}, ["3"], "the prompt has a dependency cycle",
                 id="cycle"),
    pytest.param({"1": node("1"), "2": node("1")}, ["2"], "the prompt has a dependency cycle", id="self-loop"),
    pytest.param({"0": node(), "1": node("0", "3"), "2": node("1"), "3": node("2"), "4": node("3")}, ["4"],
                 "the prompt has a dependency cycle", id="cycle-below-a-chain"),
]


@pytest.mark.parametrize("prompt, outputs, message", ERRORS)
def test_plan_errors(prompt, outputs, message):
    with pytest.raises(PlanError) as raised:
        plan_execution(prompt, outputs)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)
