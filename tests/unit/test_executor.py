"""The graph executor: order, values along links, outputs, errors and interrupts."""

from __future__ import annotations

import pytest

from farm.graph.executor import GraphExecutor
from farm.nodes.base import Interrupted, Node, NodeOutput
from farm.nodes.registry import default_registry
from farm.storage import LocalStorage
from tests.nodepack import NODES


@pytest.fixture
def executor(tmp_path):
    storage = LocalStorage({"output": tmp_path / "o", "input": tmp_path / "i", "temp": tmp_path / "t"})
    return GraphExecutor(default_registry(extra=NODES), storage)


PROMPT = {
    "1": {"class_type": "Number", "inputs": {"value": 2}},
    "2": {"class_type": "Number", "inputs": {"value": 3}},
    "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
    "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    "5": {"class_type": "Number", "inputs": {"value": 7}},
    "6": {"class_type": "Show", "inputs": {"value": ["5", 0], "undeclared": 1}},
}


def run(executor, prompt, outputs, check_interrupt=lambda: None):
    events = []
    result = executor.execute("p1", prompt, outputs, {"extra_pnginfo": {"workflow": {"id": "w"}}},
                              lambda event, data: events.append((event, data)), check_interrupt)
    return result, events


def test_runs_only_the_outputs_to_execute_in_dependency_order(executor):
    result, events = run(executor, PROMPT, ["4"])
    assert result.status == "success" and result.completed
    assert [data["node"] for event, data in events if event == "executing"] == ["1", "2", "3", "4"]
    assert result.outputs == {"4": {"text": ["5"], "node": ["4"], "nodes": [6], "pnginfo": [{"workflow": {"id": "w"}}]}}
    assert [event for event, _ in events] == [
        "execution_start", "execution_cached",
        *["progress_state", "executing", "progress_state"] * 3,
        "progress_state", "executing", "executed", "progress_state",
        "execution_success",
    ]
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]
    executed = next(data for event, data in events if event == "executed")
    assert executed == {"node": "4", "display_node": "4", "output": result.outputs["4"], "prompt_id": "p1"}


def test_several_outputs_and_undeclared_constants_are_dropped(executor):
    result, _ = run(executor, PROMPT, ["4", "6"])
    assert result.outputs["6"]["text"] == ["7"] and result.outputs["4"]["text"] == ["5"]


def test_a_node_exception_stops_the_prompt_with_comfyui_error_fields(executor):
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 2}},
        "2": {"class_type": "Number", "inputs": {"value": 3}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "7": {"class_type": "Fail", "inputs": {"value": ["3", 0]}},
        "8": {"class_type": "Show", "inputs": {"value": ["7", 0]}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }
    result, events = run(executor, prompt, ["8", "4"])
    assert result.status == "error"
    error = result.error
    assert set(error) == {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs", "timestamp"}
    assert (error["node_id"], error["node_type"], error["exception_type"]) == ("7", "Fail", "ValueError")
    assert error["exception_message"] == "cannot use 5\n"
    assert error["executed"] == ["1", "2", "3"]
    assert error["current_inputs"] == {"value": [5]}
    assert any("cannot use" in line or "raise ValueError" in line for line in error["traceback"])
    assert events[-1] == ("execution_error", error)
    assert "4" not in result.outputs  # nothing runs after the first failure


def progress_states(events):
    return [data for event, data in events if event == "progress_state"]


def entry(node_id, value, maximum, state):
    return {"value": value, "max": maximum, "state": state, "node_id": node_id, "prompt_id": "p1",
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id}


def test_progress_state_is_cumulative_per_prompt_and_follows_comfyui_order(executor):
    prompt = {"1": {"class_type": "Steps", "inputs": {"steps": 2}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    _, events = run(executor, prompt, ["2"])
    assert [event for event, _ in events] == [
        "execution_start", "execution_cached",
        "progress_state", "executing", "progress_state", "progress", "progress_state", "progress", "progress_state",
        "progress_state", "executing", "executed", "progress_state",
        "execution_success",
    ]
    states = progress_states(events)
    assert all(state["prompt_id"] == "p1" for state in states)
    assert [state["nodes"] for state in states] == [
        {"1": entry("1", 0, 1, "running")},
        {"1": entry("1", 1, 2, "running")},
        {"1": entry("1", 2, 2, "running")},
        {"1": entry("1", 2, 2, "finished")},
        {"1": entry("1", 2, 2, "finished"), "2": entry("2", 0, 1, "running")},
        {"1": entry("1", 2, 2, "finished"), "2": entry("2", 1, 1, "finished")},
    ]


def test_cached_output_nodes_appear_finished_in_progress_state(cached_executor):
    run(cached_executor, PROMPT, ["4"])
    _, events = run(cached_executor, PROMPT, ["4"])
    assert [event for event, _ in events] == ["execution_start", "execution_cached", "executed", "progress_state",
                                              "execution_success"]
    assert progress_states(events) == [{"prompt_id": "p1", "nodes": {"4": entry("4", 1, 1, "finished")}}]


def test_a_failing_node_stays_running_in_progress_state(executor):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}}}
    _, events = run(executor, prompt, ["2"])
    assert [event for event, _ in events][-3:] == ["progress_state", "executing", "execution_error"]
    assert progress_states(events)[-1]["nodes"]["2"]["state"] == "running"


class Sampling(Node):
    """Offers a preview at every step, as the sampler nodes do."""

    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"steps": ["INT"]}}

    def run(self, ctx, steps):
        for step in range(steps):
            if ctx.preview is not None:
                ctx.preview(lambda step=step: ("image/jpeg", b"jpeg %d" % step))
            ctx.report_progress(step + 1, steps)
        return NodeOutput((steps,))


@pytest.fixture
def sampling_executor(tmp_path):
    storage = LocalStorage({"output": tmp_path / "o", "input": tmp_path / "i", "temp": tmp_path / "t"})
    return GraphExecutor(default_registry(extra=(*NODES, Sampling)), storage)


SAMPLING_PROMPT = {"1": {"class_type": "Sampling", "inputs": {"steps": 3}},
                   "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def run_with_extra(executor, prompt, outputs, extra_data):
    events = []
    executor.execute("p1", prompt, outputs, extra_data, lambda event, data: events.append((event, data)))
    return events


def test_no_previews_unless_a_preview_method_is_asked_for(sampling_executor):
    assert "preview_image" not in [event for event, _ in run_with_extra(sampling_executor, SAMPLING_PROMPT, ["2"], {})]
    events = run_with_extra(sampling_executor, SAMPLING_PROMPT, ["2"], {"preview_method": "none"})
    assert "preview_image" not in [event for event, _ in events]


def test_previews_are_rate_limited_and_come_between_progress_state_and_progress(sampling_executor):
    import base64

    events = run_with_extra(sampling_executor, SAMPLING_PROMPT, ["2"], {"preview_method": "latent2rgb"})
    names = [event for event, _ in events]
    at = names.index("preview_image")
    assert names[at - 1:at + 2] == ["progress_state", "preview_image", "progress"]
    assert names.count("preview_image") == 1  # three steps in well under PREVIEW_INTERVAL
    preview = events[at][1]
    assert preview == {"node_id": "1", "prompt_id": "p1", "display_node_id": "1", "parent_node_id": None,
                       "real_node_id": "1", "image_type": "image/jpeg",
                       "image": base64.b64encode(b"jpeg 0").decode()}


def test_the_worker_setting_turns_previews_on_and_the_prompt_can_turn_them_off(sampling_executor):
    sampling_executor.preview_method = "auto"
    assert "preview_image" in [event for event, _ in run_with_extra(sampling_executor, SAMPLING_PROMPT, ["2"], {})]
    events = run_with_extra(sampling_executor, SAMPLING_PROMPT, ["2"], {"preview_method": "none"})
    assert "preview_image" not in [event for event, _ in events]


def test_progress_events_and_interrupt_between_steps(executor):
    prompt = {"1": {"class_type": "Steps", "inputs": {"steps": 5}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    result, events = run(executor, prompt, ["2"])
    progress = [data for event, data in events if event == "progress"]
    assert progress[0] == {"value": 1, "max": 5, "prompt_id": "p1", "node": "1"} and len(progress) == 5

    calls = []

    def interrupt_on_third_check():
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted()

    result, events = run(executor, prompt, ["2"], interrupt_on_third_check)
    assert result.status == "interrupted"
    event, data = events[-1]
    assert event == "execution_interrupted"
    assert (data["node_id"], data["node_type"], data["executed"]) == ("1", "Steps", [])
    assert [m[0] for m in result.messages][-1] == "execution_interrupted"


@pytest.fixture
def cached_executor(tmp_path):
    from farm.graph.cache import ExecutionCache

    storage = LocalStorage({"output": tmp_path / "o", "input": tmp_path / "i", "temp": tmp_path / "t"})
    registry = default_registry(extra=NODES)
    executor = GraphExecutor(registry, storage)
    executor.cache = ExecutionCache(registry, executor.env)
    return executor


def executed_nodes(events):
    return [data["node"] for event, data in events if event == "executing"]


def test_unchanged_nodes_are_not_run_again_and_are_reported_cached(cached_executor):
    first, events = run(cached_executor, PROMPT, ["4"])
    assert executed_nodes(events) == ["1", "2", "3", "4"]
    second, events = run(cached_executor, PROMPT, ["4"])
    assert executed_nodes(events) == []
    assert next(data for event, data in events if event == "execution_cached")["nodes"] == ["1", "2", "3", "4"]
    assert ("executed", {"node": "4", "display_node": "4", "output": first.outputs["4"], "prompt_id": "p1"}) in events
    assert second.outputs == first.outputs and second.status == "success"


def test_a_changed_constant_reruns_only_what_depends_on_it(cached_executor):
    run(cached_executor, PROMPT, ["4", "6"])
    changed = {**PROMPT, "2": {"class_type": "Number", "inputs": {"value": 4}}}
    result, events = run(cached_executor, changed, ["4", "6"])
    assert executed_nodes(events) == ["2", "3", "4"]
    assert result.outputs["4"]["text"] == ["6"] and result.outputs["6"]["text"] == ["7"]
    cached = next(data for event, data in events if event == "execution_cached")["nodes"]
    assert cached == ["1", "5", "6"]


def test_identical_subgraphs_share_results_whatever_their_ids(cached_executor):
    run(cached_executor, PROMPT, ["4"])
    renamed = {f"x{key}": {**node, "inputs": {k: [f"x{v[0]}", v[1]] if isinstance(v, list) else v
                                              for k, v in node["inputs"].items()}}
               for key, node in PROMPT.items()}
    _, events = run(cached_executor, renamed, ["x4"])
    assert executed_nodes(events) == []


def test_results_survive_only_into_a_prompt_that_still_has_the_node(cached_executor):
    run(cached_executor, PROMPT, ["4"])
    other = {"9": {"class_type": "Number", "inputs": {"value": 9}},
             "10": {"class_type": "Show", "inputs": {"value": ["9", 0]}}}
    run(cached_executor, other, ["10"])
    _, events = run(cached_executor, PROMPT, ["4"])
    assert executed_nodes(events) == ["1", "2", "3", "4"]  # dropped when the other prompt started


def test_a_failed_node_is_not_cached_but_what_ran_before_it_is(cached_executor):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    run(cached_executor, prompt, ["3"])
    result, events = run(cached_executor, prompt, ["3"])
    assert executed_nodes(events) == ["2"] and result.status == "error"


def test_load_image_runs_again_when_its_file_changes(tmp_path):
    from PIL import Image

    from farm.graph.cache import ExecutionCache

    storage = LocalStorage({"output": tmp_path / "o", "input": tmp_path / "i", "temp": tmp_path / "t"})
    executor = GraphExecutor(default_registry(), storage)
    executor.cache = ExecutionCache(executor.registry, executor.env)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(storage.root("input") / "in.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    run(executor, prompt, ["2"])
    _, events = run(executor, prompt, ["2"])
    assert executed_nodes(events) == []
    Image.new("RGB", (4, 4), (0, 255, 0)).save(storage.root("input") / "in.png")
    _, events = run(executor, prompt, ["2"])
    assert executed_nodes(events) == ["1", "2"]


def test_the_preview_method_comes_from_the_prompt_else_the_worker():
    from farm.graph.progress import preview_method

    assert preview_method({}, "none") == "none"
    assert preview_method({"preview_method": "latent2rgb"}, "none") == "latent2rgb"
    assert preview_method({"preview_method": "none"}, "auto") == "none"
    assert preview_method({"preview_method": "default"}, "auto") == "auto"  # ComfyUI's "use the server's"
    assert preview_method({"preview_method": 3}, "taesd") == "taesd"
    assert preview_method({}, "bogus") == "none"
