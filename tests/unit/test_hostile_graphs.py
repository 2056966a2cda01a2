"""Hostile POST /prompt bodies: every malformed graph or value is a 400 in ComfyUI's error shape.

Generated with hypothesis (bounded examples, no example database) and spelled out for each kind:
cycles, 10,000-node chains, links to missing nodes and outputs, wrong input types, NaN and
Infinity, huge numbers, deep nesting, 10 MB strings, unknown or missing class types, non-object
nodes. Never a 500 (Flask would log it), never NaN in an answer (a browser cannot parse it).
"""

from __future__ import annotations

import json
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.graph import dependents
from farm.graph.storable import MAX_DEPTH, first_problem
from farm.graph.validation import CYCLE_SHOWN, MAX_NODES
from farm.nodes.registry import default_registry
from tests.workflows import invert_workflow

BOUNDED = settings(max_examples=60, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REGISTRY = default_registry()


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    """One farm on SQLite for the generated examples (refused bodies never reach the database)."""
    from farm.config import load_settings
    from farm.db.migrate import upgrade
    from farm.services.context import make_context
    from tests.conftest import RecordingSender
    from web import create_app

    folder = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{folder}/farm.db"
    upgrade(url)
    config = load_settings(env={}, data_dir=str(folder / "data"), models_dir=str(folder / "models"), database_url=url)
    context = make_context(config, sender=RecordingSender())
    yield create_app(config, context=context).test_client()
    context.database.dispose()


def post(client, body):
    return client.post("/prompt", data=json.dumps(body))


def post_text(client, text: str):
    """POST a body given as JSON text: what Python's json.dumps cannot write (10**5000, bad nesting)."""
    return client.post("/prompt", data=text)


def _no_constants(name):
    raise AssertionError(f"{name} in an answer: not JSON a browser parses")


def answer(response) -> dict:
    """The answer, parsed as strictly as a browser would (no NaN or Infinity)."""
    return json.loads(response.data, parse_constant=_no_constants)


def assert_error_shape(error: dict) -> None:
    assert set(error) == {"type", "message", "details", "extra_info"}, error
    assert all(isinstance(error[key], str) for key in ("type", "message", "details"))
    assert isinstance(error["extra_info"], dict)


def refused(response, error_type: str | None = None) -> dict:
    """Asserts a 400 in ComfyUI's shape (of type `error_type` when given) and returns its body."""
    assert response.status_code == 400, response.data[:1000]
    body = answer(response)
    assert set(body) == {"error", "node_errors"}
    assert_error_shape(body["error"])
    for entry in body["node_errors"].values():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        assert entry["errors"] and isinstance(entry["dependent_outputs"], list)
        for error in entry["errors"]:
            assert_error_shape(error)
    if error_type is not None:
        assert body["error"]["type"] == error_type, body["error"]
    return body


def node_error_types(body: dict) -> set[str]:
    return {error["type"] for entry in body["node_errors"].values() for error in entry["errors"]}


def answered(response) -> dict:
    """Any answer the route may give a body it cannot trust: accepted, or a 400 in the shape."""
    if response.status_code == 200:
        body = answer(response)
        assert set(body) == {"prompt_id", "number", "node_errors"}
        return body
    return refused(response)


# -- graphs ------------------------------------------------------------------------------------

def empty(**inputs) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0, **inputs}}


def invert(source, index=0) -> dict:
    return {"class_type": "ImageInvert", "inputs": {"image": [source, index]}}


def save(source, index=0, prefix="h") -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [source, index], "filename_prefix": prefix}}


def blend(first, second, factor=0.5) -> dict:
    return {"class_type": "ImageBlend", "inputs": {"image1": [first, 0], "image2": [second, 0],
                                                   "blend_factor": factor, "blend_mode": "normal"}}


def chain(length: int) -> dict:
    """EmptyImage "0", inverts "1".."length-2", SaveImage "length-1" (ids in order)."""
    prompt = {"0": empty()}
    for index in range(1, length - 1):
        prompt[str(index)] = invert(str(index - 1))
    prompt[str(length - 1)] = save(str(length - 2))
    return prompt


def with_raw(prompt: dict, node_id: str, name: str, raw: str) -> str:
    """A body whose input `name` of `node_id` is the JSON text `raw` (NaN, 10**400, deep nesting)."""
    prompt = json.loads(json.dumps(prompt))
    prompt[node_id]["inputs"][name] = "__RAW__"
    return json.dumps({"prompt": prompt}).replace('"__RAW__"', raw)


# -- generated: any body at all ----------------------------------------------------------------

IDS = ["0", "1", "2", "3", "4", "5"]
CLASSES = ["EmptyImage", "ImageInvert", "ImageBlend", "ImageScaleBy", "SaveImage", "PreviewImage", "LoadImage",
           "Nope", ""]
INPUT_NAMES = ["image", "image1", "image2", "images", "width", "height", "batch_size", "color", "scale_by",
               "upscale_method", "blend_factor", "blend_mode", "filename_prefix", "extra"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(IDS + ["bilinear", "normal"]),
)
links = st.lists(st.one_of(st.sampled_from(IDS + ["missing"]), scalars), min_size=0, max_size=3) | st.tuples(
    st.sampled_from(IDS + ["missing"]), st.integers(min_value=-2, max_value=3)).map(list)
values = st.recursive(scalars | links, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
nodes = st.one_of(
    st.fixed_dictionaries({"class_type": st.sampled_from(CLASSES),
                           "inputs": st.dictionaries(st.sampled_from(INPUT_NAMES), values, max_size=5)},
                          optional={"_meta": st.dictionaries(st.just("title"), values)}),
    st.dictionaries(st.sampled_from(["class_type", "inputs", "_meta"]), values, max_size=3),
    values,
)
prompts = st.dictionaries(st.sampled_from(IDS), nodes, max_size=6)
bodies = st.fixed_dictionaries({"prompt": prompts | values}, optional={
    "extra_data": values, "number": values, "client_id": values, "partial_execution_targets": values,
    "front": st.booleans(), "prompt_id": st.just(str(uuid.uuid4())) | values})


@BOUNDED
@given(body=bodies | values)
def test_any_body_is_accepted_or_a_400_in_the_error_shape(app_client, body):
    result = answered(post(app_client, body))
    if _unstorable(body):
        assert "prompt_id" not in result  # never stored: PostgreSQL's JSONB has no NaN and no NUL


def _unstorable(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_unstorable(key) or _unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


# -- generated: a valid chain with one thing broken ---------------------------------------------

HOSTILE_TEXT = ['NaN', 'Infinity', '-Infinity', '1e400', '-1e400', '"a\\u0000b"', '"\\ud800"',
                "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), '{"a":' * (MAX_DEPTH + 5) + "1" + "}" * (MAX_DEPTH + 5)]


def safe_text(max_size: int):
    """Text without NUL, which would be refused before the fault the case is about."""
    return st.text(st.characters(exclude_characters="\x00"), max_size=max_size)


@st.composite
def broken_chains(draw):
    """(body, the error type expected at the top, a node error type expected or None)."""
    length = draw(st.integers(min_value=3, max_value=40))
    prompt = chain(length)
    last = str(length - 1)
    target = str(draw(st.integers(min_value=1, max_value=length - 1)))  # a node with a link
    name = "images" if target == last else "image"
    kind = draw(st.sampled_from(["cycle", "missing_node", "bad_index", "bad_source", "bad_link_length",
                                 "wrong_type", "hostile", "unknown_class", "not_a_node", "no_class_type",
                                 "inputs_not_object", "required_missing"]))
    failed = "prompt_outputs_failed_validation"
    if kind == "cycle":  # an invert linked from itself or from an invert after it
        first = draw(st.integers(min_value=1, max_value=length - 2))
        closing = draw(st.integers(min_value=first, max_value=length - 2))
        prompt[str(first)]["inputs"]["image"] = [str(closing), 0]
        return json.dumps({"prompt": prompt}), failed, "dependency_cycle"
    if kind == "missing_node":
        prompt[target]["inputs"][name] = [draw(st.sampled_from(["missing", "", "00", str(length)])), 0]
        return json.dumps({"prompt": prompt}), failed, "exception_during_inner_validation"
    if kind == "bad_index":
        index = draw(st.one_of(st.integers(min_value=1, max_value=10 ** 30), st.integers(max_value=-1),
                               st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                               safe_text(max_size=3), st.lists(st.integers(), max_size=2)))
        prompt[target]["inputs"][name] = [str(int(target) - 1), index]
        return json.dumps({"prompt": prompt}), failed, "exception_during_inner_validation"
    if kind == "bad_source":
        source = draw(st.one_of(st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                                st.lists(st.integers(), max_size=2), st.dictionaries(safe_text(max_size=2), st.integers())))
        prompt[target]["inputs"][name] = [source, 0]
        return json.dumps({"prompt": prompt}), failed, "exception_during_inner_validation"
    if kind == "bad_link_length":
        prompt[target]["inputs"][name] = draw(st.lists(st.just("0"), max_size=5).filter(lambda v: len(v) != 2))
        return json.dumps({"prompt": prompt}), failed, "bad_linked_input"
    if kind == "wrong_type":
        field, value = draw(st.sampled_from([("width", "abc"), ("width", {"x": 1}), ("width", "1e999"),
                                             ("color", "nan"), ("height", []), ("batch_size", "")]))
        prompt["0"]["inputs"][field] = value
        expected = "bad_linked_input" if isinstance(value, list) else "invalid_input_type"
        return json.dumps({"prompt": prompt}), failed, expected
    if kind == "hostile":
        node = draw(st.sampled_from(sorted(prompt)))
        field = draw(st.sampled_from([*prompt[node]["inputs"], "undeclared"]))
        return with_raw(prompt, node, field, draw(st.sampled_from(HOSTILE_TEXT))), "invalid_prompt", \
            "invalid_input_value"
    if kind == "unknown_class":
        prompt[target]["class_type"] = draw(safe_text(max_size=8).filter(lambda text: text not in REGISTRY))
        return json.dumps({"prompt": prompt}), "missing_node_type", None
    if kind == "not_a_node":
        prompt[target] = draw(st.one_of(st.integers(), safe_text(max_size=4), st.lists(st.integers(), max_size=2),
                                        st.none(), st.booleans()))
        return json.dumps({"prompt": prompt}), "missing_node_type", None
    if kind == "no_class_type":
        del prompt[target]["class_type"]
        return json.dumps({"prompt": prompt}), "missing_node_type", None
    if kind == "inputs_not_object":
        prompt[target]["inputs"] = draw(st.one_of(st.integers(), safe_text(max_size=3), st.lists(st.integers())))
        return json.dumps({"prompt": prompt}), "invalid_prompt", None
    del prompt[target]["inputs"][name]
    return json.dumps({"prompt": prompt}), failed, "required_input_missing"


@BOUNDED
@given(case=broken_chains())
def test_a_chain_with_one_fault_is_refused_with_the_fault_named(app_client, case):
    body, error_type, node_error_type = case
    refusal = refused(post_text(app_client, body), error_type)
    if node_error_type is not None:
        assert node_error_type in node_error_types(refusal), refusal


# -- generated: the storable check finds exactly the values PostgreSQL or a browser refuses --------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.lists(st.sampled_from(["a", "é", "\x00", "\ud800", "\udfff", "[", "\\u0000"]), max_size=3).map("".join),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["k", "\x00", "\ud83d", "é"]), inner, max_size=3),
    max_leaves=12)


def _bad_leaf(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return "\x00" in value or any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    return False


def _reference_clean(value, max_depth: int, depth: int = 0) -> bool:
    if isinstance(value, dict):
        return depth < max_depth and not any(_bad_leaf(key) for key in value) \
            and all(_reference_clean(item, max_depth, depth + 1) for item in value.values())
    if isinstance(value, list):
        return depth < max_depth and all(_reference_clean(item, max_depth, depth + 1) for item in value)
    return not _bad_leaf(value)


@settings(max_examples=300, deadline=None, database=None)
@given(value=json_values, max_depth=st.integers(min_value=1, max_value=5))
def test_first_problem_finds_exactly_the_unstorable_values(value, max_depth):
    problem = first_problem(value, max_depth)
    assert (problem is None) == _reference_clean(value, max_depth)
    if problem is not None:  # the path leads to the culprit
        found = value
        for step in problem.path:
            found = found[step]
        if "nested deeper" in problem.reason:
            assert len(problem.path) >= max_depth and isinstance(found, (dict, list))
        elif problem.reason.startswith("a key"):
            assert any(_bad_leaf(key) for key in found)
        else:
            assert _bad_leaf(found)


# -- generated: the linear-time dependent_outputs equal a walk per output ------------------------

@settings(max_examples=150, deadline=None, database=None)
@given(size=st.integers(min_value=1, max_value=12), data=st.data())
def test_dependent_output_masks_equal_a_walk_per_output(size, data):
    edges = data.draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, size + 1)), max_size=3 * size))
    graph = {node: [target for source, target in edges if source == node] for node in range(size)}
    outputs = data.draw(st.lists(st.integers(0, size - 1), unique=True, min_size=1, max_size=size))

    def sources(node):
        return graph.get(node, [])  # size and size + 1 are leaves (a missing node's id)

    expected: dict = {}
    for bit, output in enumerate(outputs):
        seen, stack = set(), [output]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(sources(node))
        for node in seen:
            expected[node] = expected.get(node, 0) | 1 << bit
    assert dependents.output_masks(outputs, sources) == expected
    order = _finishing_order(outputs, sources)
    if order is not None:  # acyclic: the shortcut the validator takes gives the same masks
        assert dependents.output_masks(outputs, sources, order) == expected


def _finishing_order(roots, sources) -> list | None:
    """Depth-first finishing order of the non-leaf nodes, or None when there is a cycle."""
    state, order = {}, []
    for root in roots:
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                state[node] = "done"
                order.append(node)
                continue
            if state.get(node) == "done":
                continue
            if state.get(node) == "open":
                return None
            state[node] = "open"
            stack.append((node, True))
            for source in sources(node):
                if state.get(source) == "open":
                    return None
                if state.get(source) != "done":
                    stack.append((source, False))
    return [node for node in order if sources(node)]


# -- spelled out: graph shapes -----------------------------------------------------------------

def test_more_nodes_than_the_limit_are_refused_before_validation(app_client):
    prompt = chain(MAX_NODES + 1)
    body = refused(post(app_client, {"prompt": prompt}), "invalid_prompt")
    assert body["error"]["details"] == f"the prompt has {MAX_NODES + 1} nodes; at most {MAX_NODES} are accepted"


def test_a_ten_thousand_node_chain_is_accepted(app_client):
    response = post(app_client, {"prompt": chain(10_000)})
    assert response.status_code == 200, response.data[:500]


def test_a_ten_thousand_node_chain_failing_at_its_root_names_the_root_only(app_client):
    prompt = chain(10_000)
    prompt["0"] = empty(width=0)
    body = refused(post(app_client, {"prompt": prompt}), "prompt_outputs_failed_validation")
    assert list(body["node_errors"]) == ["0"]
    assert body["node_errors"]["0"]["dependent_outputs"] == ["9999"]
    assert [e["type"] for e in body["node_errors"]["0"]["errors"]] == ["value_smaller_than_min"]


@pytest.mark.parametrize("prompt,cycle", [
    ({"1": invert("2"), "2": invert("1"), "3": save("1")}, ["1", "2"]),
    ({"1": invert("1"), "3": save("1")}, ["1"]),
])
def test_cycles_are_dependency_cycle_errors(app_client, prompt, cycle):
    body = refused(post(app_client, {"prompt": prompt}), "prompt_outputs_failed_validation")
    assert sorted(body["node_errors"]) == cycle
    for node_id, entry in body["node_errors"].items():
        assert [e["type"] for e in entry["errors"]] == ["dependency_cycle"]
        assert entry["errors"][0]["extra_info"] == {"node_id": node_id, "cycle_nodes": cycle}


def test_a_ten_thousand_node_cycle_lists_its_first_nodes_and_its_length(app_client):
    size = 10_000
    prompt = {str(index): invert(str((index + 1) % size)) for index in range(size)}
    prompt["out"] = save("0")
    response = post(app_client, {"prompt": prompt})
    body = refused(response, "prompt_outputs_failed_validation")
    assert len(body["node_errors"]) == size
    info = body["node_errors"]["0"]["errors"][0]["extra_info"]
    assert info["cycle_length"] == size and len(info["cycle_nodes"]) == CYCLE_SHOWN
    assert f"... {size - CYCLE_SHOWN} more nodes" in body["node_errors"]["0"]["errors"][0]["details"]
    # Each node names at most CYCLE_SHOWN others: the answer grows with the graph, not its square.
    assert len(response.data) < 1000 * size


def test_every_node_closing_a_cycle_costs_each_node_one_error(app_client):
    """A chain of blends whose every node also links to the top: 10,000 cycles of 1..10,000 nodes."""
    size = 10_000
    top = str(size - 1)
    prompt = {str(index): blend(str(index - 1) if index else top, top) for index in range(size)}
    prompt["out"] = save(top)
    response = post(app_client, {"prompt": prompt})
    body = refused(response, "prompt_outputs_failed_validation")
    assert len(body["node_errors"]) == size
    assert all(len(entry["errors"]) == 1 for entry in body["node_errors"].values())
    assert len(response.data) < 1500 * size


def test_thousands_of_outputs_over_failing_nodes_list_at_most_the_cap(app_client):
    """Every chain node invalid, and each read by its own output: dependent_outputs are cut."""
    size = 3_000
    prompt = {"0": empty()}
    for index in range(1, size):
        prompt[str(index)] = blend(str(index - 1), "0", factor=2.0)  # over the max of 1.0
        prompt[f"out{index}"] = save(str(index))
    response = post(app_client, {"prompt": prompt})
    body = refused(response, "prompt_outputs_failed_validation")
    first = body["node_errors"]["1"]
    assert len(first["dependent_outputs"]) == dependents.MAX_LISTED
    assert first["dependent_outputs"] == [f"out{index}" for index in range(1, dependents.MAX_LISTED + 1)]
    assert body["node_errors"][str(size - 1)]["dependent_outputs"] == [f"out{size - 1}"]


@pytest.mark.parametrize("link,node_with_error,exception_type", [
    (["9", 0], "9", "KeyError"),
    (["1", 1], "1", "IndexError"),
    (["1", -1], "1", "IndexError"),
    (["1", 0.5], "1", "IndexError"),
    (["1", True], "1", "IndexError"),
    (["1", "0"], "1", "IndexError"),
    (["1", None], "1", "IndexError"),
    (["1", 10 ** 400], "1", "IndexError"),
    ([1, 0], "1", "KeyError"),
    ([None, 0], "None", "KeyError"),
    ([["1"], 0], "['1']", "KeyError"),
    ([{"id": "1"}, 0], "{'id': '1'}", "KeyError"),
])
def test_links_to_missing_nodes_or_outputs(app_client, link, node_with_error, exception_type):
    prompt = {"1": empty(), "2": {"class_type": "ImageInvert", "inputs": {"image": link}}, "3": save("2")}
    body = refused(post(app_client, {"prompt": prompt}), "prompt_outputs_failed_validation")
    error = body["node_errors"][node_with_error]["errors"][0]
    assert error["type"] == "exception_during_inner_validation"
    assert error["extra_info"]["exception_type"] == exception_type


@pytest.mark.parametrize("link", [[], ["1"], ["1", 0, 0]])
def test_links_of_the_wrong_length(app_client, link):
    prompt = {"1": empty(), "2": {"class_type": "ImageInvert", "inputs": {"image": link}}, "3": save("2")}
    body = refused(post(app_client, {"prompt": prompt}), "prompt_outputs_failed_validation")
    assert node_error_types(body) == {"bad_linked_input"}


@pytest.mark.parametrize("field,value,error_type", [
    ("width", "abc", "invalid_input_type"),
    ("width", {"a": 1}, "invalid_input_type"),
    ("width", 10 ** 400, "value_bigger_than_max"),
    ("width", 1e308, "value_bigger_than_max"),  # int(1e308) is a 309-digit integer
    ("color", -1, "value_smaller_than_min"),
])
def test_wrong_constant_types_and_ranges(app_client, field, value, error_type):
    body = refused(post(app_client, {"prompt": {"1": empty(**{field: value}), "2": save("1")}}),
                   "prompt_outputs_failed_validation")
    assert node_error_types(body) == {error_type}


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999"])
def test_a_float_input_given_text_that_parses_to_nan_or_infinity(app_client, text):
    body = refused(post(app_client, {"prompt": {"1": empty(), "2": blend("1", "1", factor=text), "3": save("2")}}),
                   "prompt_outputs_failed_validation")
    error = body["node_errors"]["2"]["errors"][0]
    assert error["type"] == "invalid_input_type" and error["extra_info"]["received_value"] == text
    assert "is not a finite number" in error["extra_info"]["exception_message"]


def test_a_link_type_mismatch(app_client):
    prompt = {"1": empty(), "2": {"class_type": "ImageScaleBy", "inputs": {
        "image": ["1", 0], "upscale_method": "bilinear", "scale_by": ["1", 0]}}, "3": save("2")}
    body = refused(post(app_client, {"prompt": prompt}), "prompt_outputs_failed_validation")
    assert node_error_types(body) == {"return_type_mismatch"}


@pytest.mark.parametrize("prompt,error_type", [
    ({"1": {"class_type": "Nope", "inputs": {}}}, "missing_node_type"),
    ({"1": {"class_type": 5, "inputs": {}}}, "missing_node_type"),
    ({"1": {"class_type": ["SaveImage"], "inputs": {}}}, "missing_node_type"),
    ({"1": {"inputs": {}}}, "missing_node_type"),
    ({"1": 5}, "missing_node_type"),
    ({"1": None}, "missing_node_type"),
    ({"1": ["SaveImage"]}, "missing_node_type"),
    ({"1": "SaveImage"}, "missing_node_type"),
    ({"1": {"class_type": "SaveImage", "inputs": [1]}}, "invalid_prompt"),
    ({"1": {"class_type": "SaveImage"}}, "prompt_outputs_failed_validation"),  # its inputs are missing
    ({"1": empty()}, "prompt_no_outputs"),
    ({}, "prompt_no_outputs"),
    ([invert_workflow()], "invalid_prompt"),
    ("x", "invalid_prompt"),
    (None, "invalid_prompt"),
    ({"x" * 300: save("1")}, "invalid_prompt"),  # node ids are echoed in many errors: kept short
])
def test_nodes_that_are_not_nodes(app_client, prompt, error_type):
    refused(post(app_client, {"prompt": prompt}), error_type)


@pytest.mark.parametrize("body", [[], "x", 5, None, {"prompt_": {}}, [{"prompt": invert_workflow()}]])
def test_bodies_that_are_not_a_prompt_body(app_client, body):
    refused(post(app_client, body), "no_prompt")


# -- spelled out: values the database cannot store (on SQLite and PostgreSQL) --------------------

@pytest.mark.parametrize("raw,reason", [
    ("NaN", "NaN is not a number"), ("Infinity", "Infinity is not a number"),
    ("-Infinity", "-Infinity is not a number"), ("1e400", "Infinity is not a number"),
    ('"a\\u0000b"', "NUL character"), ('"\\udc00"', "unpaired surrogate"),
])
@pytest.mark.parametrize("node_id,name", [
    ("1", "color"),  # an INT
    ("3", "filename_prefix"),  # a STRING
    ("2", "undeclared"),  # stored as sent, never checked by a schema
])
def test_unstorable_values_in_inputs_name_the_node_and_input(client, raw, reason, node_id, name):
    body = refused(post_text(client, with_raw(invert_workflow(), node_id, name, raw)), "invalid_prompt")
    assert body["error"]["details"].startswith(f"node '{node_id}' input '{name}': ")
    assert reason in body["error"]["details"]
    (error,) = body["node_errors"][node_id]["errors"]
    assert error["type"] == "invalid_input_value" and error["extra_info"] == {"input_name": name}


@pytest.mark.parametrize("field,raw,where", [
    ("extra_data", '{"extra_pnginfo": {"workflow": {"nodes": [1, NaN]}}}', "extra_data.extra_pnginfo.workflow.nodes[1]"),
    ("extra_data", '{"a\\u0000": 1}', "extra_data: a key with a NUL"),
    ("number", "NaN", "number"),
    ("number", "-Infinity", "number"),
    ("client_id", '"\\ud800"', "client_id"),
    ("partial_execution_targets", '["3", Infinity]', "partial_execution_targets[1]"),
    ("prompt_id", "NaN", "prompt_id"),
])
def test_unstorable_values_elsewhere_in_the_body_name_their_place(client, field, raw, where):
    text = json.dumps({"prompt": invert_workflow(), field: "__RAW__"}).replace('"__RAW__"', raw)
    body = refused(post_text(client, text), "invalid_prompt")
    assert body["error"]["details"].startswith(where), body["error"]["details"]
    assert body["node_errors"] == {}


def test_a_meta_title_with_nan_is_refused(client):
    prompt = invert_workflow()
    prompt["3"]["_meta"] = {"title": "__RAW__"}
    body = refused(post_text(client, json.dumps({"prompt": prompt}).replace('"__RAW__"', "NaN")),
                   "invalid_prompt")
    assert body["error"]["details"].startswith("prompt.3._meta.title: NaN")


@pytest.mark.parametrize("number,accepted", [
    (10 ** 400, False), ("1e999", False), ("nan", False), (1e308, True), ("2.5", True),
])
def test_number_must_be_finite(client, number, accepted):
    response = post(client, {"prompt": invert_workflow(), "number": number})
    if accepted:
        assert response.status_code == 200 and answer(response)["number"] == float(number)
    else:
        assert refused(response, "invalid_prompt")["error"]["details"].startswith("number must be a finite number")


def test_a_client_id_longer_than_its_column_is_refused(client):
    refused(post(client, {"prompt": invert_workflow(), "client_id": "c" * 256}), "invalid_prompt")
    assert post(client, {"prompt": invert_workflow(), "client_id": "c" * 255}).status_code == 200


def test_a_huge_integer_where_it_is_only_stored_is_accepted(client, context):
    """10**400 is valid JSON and JSONB holds it: stored and given back exactly."""
    response = post_text(client, with_raw(invert_workflow(), "2", "undeclared", "1" + "0" * 400))
    assert response.status_code == 200
    from farm.db.models import Prompt

    with context.database.reading() as session:
        stored = session.get(Prompt, answer(response)["prompt_id"]).prompt
    assert stored["2"]["inputs"]["undeclared"] == 10 ** 400


def test_an_integer_of_more_than_4300_digits_is_invalid_json(app_client):
    body = refused(post_text(app_client, with_raw(invert_workflow(), "1", "color", "1" * 5000)), "invalid_json")
    assert "4300 digits" in body["error"]["details"]


# -- spelled out: nesting and size -------------------------------------------------------------

def test_100000_nested_lists_as_the_body_is_invalid_json(app_client):
    body = refused(post_text(app_client, "[" * 100_000 + "]" * 100_000), "invalid_json")
    assert body["error"]["details"] == "the request body is nested too deeply to be parsed"


@pytest.mark.parametrize("open_,close", [("[", "]"), ('{"a":', "}")])
def test_100000_nested_levels_inside_an_input_is_invalid_json(app_client, open_, close):
    raw = open_ * 100_000 + ("1" if open_ != "[" else "") + close * 100_000
    refused(post_text(app_client, with_raw(invert_workflow(), "3", "filename_prefix", raw)), "invalid_json")


@pytest.mark.parametrize("depth", [MAX_DEPTH, 600])
def test_nesting_the_parser_takes_but_past_the_limit_is_refused_by_name(app_client, depth):
    raw = '{"a":' * depth + "1" + "}" * depth
    body = refused(post_text(app_client, with_raw(invert_workflow(), "2", "undeclared", raw)), "invalid_prompt")
    assert f"nested deeper than {MAX_DEPTH} levels" in body["error"]["details"]


def test_nesting_within_the_limit_is_stored(app_client):
    depth = MAX_DEPTH - 5  # the body, prompt, node and inputs levels come first
    raw = '{"a":' * depth + "1" + "}" * depth
    assert post_text(app_client, with_raw(invert_workflow(), "2", "undeclared", raw)).status_code == 200


def test_a_10_mb_string_input_is_accepted(app_client):
    response = post_text(app_client, with_raw(invert_workflow(), "3", "filename_prefix", json.dumps("p" * 10_000_000)))
    assert response.status_code == 200


@pytest.mark.parametrize("where", ["class_type", "combo", "node_id", "link_source"])
def test_10_mb_strings_elsewhere_are_refused(app_client, where):
    huge = "x" * 10_000_000
    prompt = {"1": empty(), "2": {"class_type": "ImageScaleBy", "inputs": {
        "image": ["1", 0], "upscale_method": "bilinear", "scale_by": 1.0}}, "3": save("2")}
    expected = "prompt_outputs_failed_validation"
    if where == "class_type":
        prompt["2"]["class_type"], expected = huge, "missing_node_type"
    elif where == "combo":
        prompt["2"]["inputs"]["upscale_method"] = huge
    elif where == "node_id":
        prompt[huge], expected = save("2"), "invalid_prompt"
    else:
        prompt["2"]["inputs"]["image"] = [huge, 0]
    response = post(app_client, {"prompt": prompt})
    refused(response, expected)
    assert len(response.data) < 4 * len(huge)  # echoed a bounded number of times
