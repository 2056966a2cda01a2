"""validate_prompt against ComfyUI's validation rules and error shapes (spec comfyui-api.md §5, §2.1).

Expected errors are spelled out literally (not built with farm.graph.errors), and every failing
case compares the whole error object and the whole node_errors mapping.
"""

from __future__ import annotations

import pytest

from farm.graph.validation import validate_prompt
from farm.nodes.base import MAX_RESOLUTION, Node
from farm.nodes.base import NodeEnvironment
from farm.nodes.registry import default_registry
from farm.storage import LocalStorage


class ShowText(Node):
    """Test-only output node with a STRING input, so an IMAGE link into it is a type mismatch."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def input_types(cls, env):
        return {
            "required": {"text": ["STRING", {"multiline": True}]},
            "optional": {"count": ["INT", {"min": 0, "max": 10}], "anything": ["*"]},
        }


class PickOne(Node):
    """Test-only output node with a combo of more than 20 choices."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()
    CHOICES = [f"choice{i}" for i in range(25)]

    @classmethod
    def input_types(cls, env):
        return {"required": {"choice": [list(cls.CHOICES)]}}


REGISTRY = default_registry(extra=[ShowText, PickOne])

SAVE_IMAGES_CONFIG = ["IMAGE", {"tooltip": "The images to save."}]
WIDTH_CONFIG = ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}]
IMAGE_CONFIG = ["IMAGE", {}]
UPSCALE_CONFIG = [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}]


@pytest.fixture
def env(tmp_path):
    storage = LocalStorage({"input": tmp_path / "input", "output": tmp_path / "output", "temp": tmp_path / "temp"})
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "a.png").write_bytes(b"only its existence is checked")
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "done.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"outside every storage folder")
    return NodeEnvironment(storage)


# ---------------------------------------------------------------- prompt builders


def empty(width=8, height=8, **extra):
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0, **extra}}


def invert(source):
    return {"class_type": "ImageInvert", "inputs": {"image": source}}


def scale(source, **overrides):
    inputs = {"image": source, "upscale_method": "bilinear", "width": 16, "height": 16, "crop": "disabled"}
    return {"class_type": "ImageScale", "inputs": {**inputs, **overrides}}


def save(source, prefix="out"):
    return {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": prefix}}


def load(image):
    return {"class_type": "LoadImage", "inputs": {"image": image}}


def err(type_, message, details="", **extra_info):
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def entry(errors, dependent_outputs, class_type):
    return {"errors": errors, "dependent_outputs": dependent_outputs, "class_type": class_type}


def failed(details=""):
    return err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)


def run(prompt, env, targets=None):
    return validate_prompt(prompt, REGISTRY, env, targets)


# ---------------------------------------------------------------- whole-prompt failures (node_errors {})

NO_OUTPUTS = err("prompt_no_outputs", "Prompt has no outputs")

STRUCTURAL = [
    pytest.param(["not", "an", "object"], None,
                 err("invalid_prompt", "Invalid prompt", "the prompt must be an object of nodes keyed by node id"),
                 id="invalid_prompt-list"),
    pytest.param(None, None,
                 err("invalid_prompt", "Invalid prompt", "the prompt must be an object of nodes keyed by node id"),
                 id="invalid_prompt-null"),
    pytest.param({"1": empty(), "2": {"class_type": "SaveImage", "inputs": ["images", "filename_prefix"]}}, None,
                 err("invalid_prompt", "Invalid prompt", "the inputs of node '2' must be an object"),
                 id="invalid_prompt-inputs-not-object"),
    pytest.param({"1": {"inputs": {}}}, None,
                 err("missing_node_type", "Cannot execute because a node is missing the class_type property.",
                     "Node ID '#1'", node_id="1", class_type=None, node_title=None),
                 id="missing_node_type-no-class_type"),
    pytest.param({"7": "SaveImage"}, None,
                 err("missing_node_type", "Cannot execute because a node is missing the class_type property.",
                     "Node ID '#7'", node_id="7", class_type=None, node_title=None),
                 id="missing_node_type-node-not-object"),
    pytest.param({"5": {"class_type": "NoSuchSampler", "inputs": {}, "_meta": {"title": "My sampler"}}}, None,
                 err("missing_node_type", "Cannot execute because node NoSuchSampler does not exist.",
                     "Node ID '#5'", node_id="5", class_type="NoSuchSampler", node_title="My sampler"),
                 id="missing_node_type-unknown-class-with-title"),
    pytest.param({"5": {"class_type": "NoSuchSampler", "inputs": {}}}, None,
                 err("missing_node_type", "Cannot execute because node NoSuchSampler does not exist.",
                     "Node ID '#5'", node_id="5", class_type="NoSuchSampler", node_title="NoSuchSampler"),
                 id="missing_node_type-unknown-class-title-defaults-to-class"),
    # The structural pass covers every node, connected to an output or not.
    pytest.param({"1": empty(), "2": save(["1", 0]), "3": {"class_type": "Nope", "inputs": {}}}, None,
                 err("missing_node_type", "Cannot execute because node Nope does not exist.",
                     "Node ID '#3'", node_id="3", class_type="Nope", node_title="Nope"),
                 id="missing_node_type-disconnected-node"),
    pytest.param({}, None, NO_OUTPUTS, id="prompt_no_outputs-empty-prompt"),
    pytest.param({"1": empty(), "2": invert(["1", 0])}, None, NO_OUTPUTS, id="prompt_no_outputs-no-output-node"),
    pytest.param({"1": empty(), "2": save(["1", 0])}, [], NO_OUTPUTS, id="prompt_no_outputs-empty-targets"),
    pytest.param({"1": empty(), "2": save(["1", 0])}, ["1", "404"], NO_OUTPUTS,
                 id="prompt_no_outputs-targets-not-outputs"),
]


@pytest.mark.parametrize("prompt, targets, error", STRUCTURAL)
def test_whole_prompt_failures(env, prompt, targets, error):
    result = run(prompt, env, targets)
    assert not result.ok
    assert result.error == error
    assert result.node_errors == {}
    assert result.outputs == []


# ---------------------------------------------------------------- per-node failures


def required_missing(name):
    return err("required_input_missing", "Required input is missing", name, input_name=name)


def inner(name, config, link, exception_type, message):
    return err("exception_during_inner_validation", "Exception when validating inner node", message,
               input_name=name, input_config=config, exception_message=message,
               exception_type=exception_type, traceback=[], linked_node=link)


def too_small(name, config, value, minimum):
    return err("value_smaller_than_min", f"Value {value} smaller than min of {minimum}", name,
               input_name=name, input_config=config, received_value=value)


def cycle(node_id, nodes, path):
    return err("dependency_cycle", "Dependency cycle detected", path, node_id=node_id, cycle_nodes=nodes)


NODE_FAILURES = [
    pytest.param(
        {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}, None,
        failed("Required input is missing: images"),
        {"9": entry([required_missing("images")], ["9"], "SaveImage")},
        id="required_input_missing-on-output"),
    pytest.param(
        {"9": {"class_type": "SaveImage"}}, None,
        failed("Required input is missing: images\nRequired input is missing: filename_prefix"),
        {"9": entry([required_missing("images"), required_missing("filename_prefix")], ["9"], "SaveImage")},
        id="required_input_missing-no-inputs-key-two-lines"),
    pytest.param(
        {"1": {"class_type": "EmptyImage", "inputs": {"height": 8, "batch_size": 1, "color": 0}},
         "2": invert(["1", 0]), "9": save(["2", 0])}, None,
        failed(""),  # the only error is upstream, so the top-level details are empty
        {"1": entry([required_missing("width")], ["9"], "EmptyImage")},
        id="required_input_missing-upstream-details-empty"),
    pytest.param(
        {"1": empty(), "9": save(["1", 0, 0])}, None,
        failed("Bad linked input, must be a length-2 list of [node_id, slot_index]: images"),
        {"9": entry([err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                         "images", input_name="images", input_config=SAVE_IMAGES_CONFIG,
                         received_value=["1", 0, 0])], ["9"], "SaveImage")},
        id="bad_linked_input-length-3"),
    pytest.param(
        {"1": empty(), "2": invert(["1"]), "9": save(["2", 0])}, None,
        failed(""),
        {"2": entry([err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                         "image", input_name="image", input_config=IMAGE_CONFIG,
                         received_value=["1"])], ["9"], "ImageInvert")},
        id="bad_linked_input-length-1-upstream"),
    pytest.param(
        {"9": save(["42", 0])}, None,
        failed(""),
        {"42": entry([inner("images", SAVE_IMAGES_CONFIG, ["42", 0], "KeyError",
                            "node '42' linked from input 'images' of node '9' does not exist in the prompt")],
                     ["9"], None)},
        id="exception_during_inner_validation-missing-source-node"),
    pytest.param(
        {"1": empty(), "9": save(["1", 1])}, None,
        failed(""),
        {"1": entry([inner("images", SAVE_IMAGES_CONFIG, ["1", 1], "IndexError",
                           "output index 1 of node '1' (EmptyImage) does not exist: it has 1 output(s)")],
                    ["9"], "EmptyImage")},
        id="exception_during_inner_validation-output-index-out-of-range"),
    pytest.param(
        {"1": empty(), "2": invert(["1", -1]), "9": save(["2", 0])}, None,
        failed(""),
        {"1": entry([inner("image", IMAGE_CONFIG, ["1", -1], "IndexError",
                           "output index -1 of node '1' (EmptyImage) does not exist: it has 1 output(s)")],
                    ["9"], "EmptyImage")},
        id="exception_during_inner_validation-negative-output-index"),
    pytest.param(
        {"9": save([4, 0])}, None,
        failed(""),
        {"4": entry([inner("images", SAVE_IMAGES_CONFIG, [4, 0], "KeyError",
                           "node 4 linked from input 'images' of node '9' does not exist in the prompt")],
                    ["9"], None)},
        id="exception_during_inner_validation-numeric-source-id"),
    pytest.param(
        {"1": empty(), "2": {"class_type": "ShowText", "inputs": {"text": ["1", 0]}}}, None,
        failed("Return type mismatch between linked nodes: text, received_type(IMAGE) mismatch input_type(STRING)"),
        {"2": entry([err("return_type_mismatch", "Return type mismatch between linked nodes",
                         "text, received_type(IMAGE) mismatch input_type(STRING)", input_name="text",
                         input_config=["STRING", {"multiline": True}], received_type="IMAGE",
                         linked_node=["1", 0])], ["2"], "ShowText")},
        id="return_type_mismatch-image-into-string"),
    pytest.param(
        {"1": load("a.png"), "9": save(["1", 1])}, None,
        failed("Return type mismatch between linked nodes: images, received_type(MASK) mismatch input_type(IMAGE)"),
        {"9": entry([err("return_type_mismatch", "Return type mismatch between linked nodes",
                         "images, received_type(MASK) mismatch input_type(IMAGE)", input_name="images",
                         input_config=SAVE_IMAGES_CONFIG, received_type="MASK",
                         linked_node=["1", 1])], ["9"], "SaveImage")},
        id="return_type_mismatch-mask-into-image"),
    pytest.param(
        {"1": empty(width="abc"), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("invalid_input_type", "Failed to convert an input value to a INT value",
                         "width, abc, invalid literal for int() with base 10: 'abc'", input_name="width",
                         input_config=WIDTH_CONFIG, received_value="abc",
                         exception_message="invalid literal for int() with base 10: 'abc'")], ["9"], "EmptyImage")},
        id="invalid_input_type-int"),
    pytest.param(
        {"1": empty(height="5.0"), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("invalid_input_type", "Failed to convert an input value to a INT value",
                         "height, 5.0, invalid literal for int() with base 10: '5.0'", input_name="height",
                         input_config=WIDTH_CONFIG, received_value="5.0",
                         exception_message="invalid literal for int() with base 10: '5.0'")], ["9"], "EmptyImage")},
        id="invalid_input_type-int-from-decimal-string"),
    pytest.param(
        {"1": empty(width=float("inf")), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("invalid_input_type", "Failed to convert an input value to a INT value",
                         "width, inf, cannot convert float infinity to integer", input_name="width",
                         input_config=WIDTH_CONFIG, received_value=float("inf"),
                         exception_message="cannot convert float infinity to integer")], ["9"], "EmptyImage")},
        id="invalid_input_type-int-overflow"),
    pytest.param(
        {"1": empty(), "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area",
                                                                       "scale_by": "big"}},
         "9": save(["2", 0])}, None,
        failed(""),
        {"2": entry([err("invalid_input_type", "Failed to convert an input value to a FLOAT value",
                         "scale_by, big, could not convert string to float: 'big'", input_name="scale_by",
                         input_config=["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
                         received_value="big", exception_message="could not convert string to float: 'big'")],
                    ["9"], "ImageScaleBy")},
        id="invalid_input_type-float"),
    pytest.param(
        {"1": empty(width=0), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([too_small("width", WIDTH_CONFIG, 0, 1)], ["9"], "EmptyImage")},
        id="value_smaller_than_min"),
    pytest.param(
        {"1": empty(width="0"), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([too_small("width", WIDTH_CONFIG, 0, 1)], ["9"], "EmptyImage")},
        id="value_smaller_than_min-checked-after-coercion"),
    pytest.param(
        {"1": empty(width=20000), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("value_bigger_than_max", "Value 20000 bigger than max of 16384", "width",
                         input_name="width", input_config=WIDTH_CONFIG, received_value=20000)],
                    ["9"], "EmptyImage")},
        id="value_bigger_than_max"),
    pytest.param(
        {"1": empty(), "2": {"class_type": "ShowText", "inputs": {"text": "hi", "count": 11}}}, None,
        failed("Value 11 bigger than max of 10: count"),
        {"2": entry([err("value_bigger_than_max", "Value 11 bigger than max of 10", "count", input_name="count",
                         input_config=["INT", {"min": 0, "max": 10}], received_value=11)], ["2"], "ShowText")},
        id="value_bigger_than_max-optional-input"),
    pytest.param(
        {"1": empty(), "2": scale(["1", 0], upscale_method="foo"), "9": save(["2", 0])}, None,
        failed(""),
        {"2": entry([err("value_not_in_list", "Value not in list",
                         "upscale_method: 'foo' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']",
                         input_name="upscale_method", input_config=UPSCALE_CONFIG, received_value="foo")],
                    ["9"], "ImageScale")},
        id="value_not_in_list"),
    pytest.param(
        {"1": {"class_type": "PickOne", "inputs": {"choice": "choice99"}}}, None,
        failed("Value not in list: choice: 'choice99' not in (list of length 25)"),
        {"1": entry([err("value_not_in_list", "Value not in list", "choice: 'choice99' not in (list of length 25)",
                         input_name="choice", input_config=None, received_value="choice99")], ["1"], "PickOne")},
        id="value_not_in_list-long-list"),
    pytest.param(
        {"1": load("x.png"), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("custom_validation_failed", "Custom validation failed for node",
                         "image - Invalid image file: x.png", input_name="image")], ["9"], "LoadImage")},
        id="custom_validation_failed-missing-file"),
    pytest.param(
        {"1": load("../secret.png"), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("custom_validation_failed", "Custom validation failed for node",
                         "image - Invalid image file: ../secret.png", input_name="image")], ["9"], "LoadImage")},
        id="custom_validation_failed-path-outside-input"),
    pytest.param(
        {"1": load(7), "9": save(["1", 0])}, None,
        failed(""),
        {"1": entry([err("custom_validation_failed", "Custom validation failed for node",
                         "image - Invalid image file: 7", input_name="image")], ["9"], "LoadImage")},
        id="custom_validation_failed-not-a-string"),
    pytest.param(
        {"1": invert(["2", 0]), "2": invert(["1", 0]), "3": save(["1", 0])}, None,
        failed(""),
        {"1": entry([cycle("1", ["1", "2"], "1 (ImageInvert) -> 2 (ImageInvert) -> 1 (ImageInvert)")],
                    ["3"], "ImageInvert"),
         "2": entry([cycle("2", ["1", "2"], "1 (ImageInvert) -> 2 (ImageInvert) -> 1 (ImageInvert)")],
                    ["3"], "ImageInvert")},
        id="dependency_cycle"),
    pytest.param(
        {"1": invert(["1", 0]), "3": save(["1", 0])}, None,
        failed(""),
        {"1": entry([cycle("1", ["1"], "1 (ImageInvert) -> 1 (ImageInvert)")], ["3"], "ImageInvert")},
        id="dependency_cycle-self-loop"),
    # B closes two cycles (through C and through E): every node of both gets its error.
    pytest.param(
        {"S": save(["B", 0]),
         "B": {"class_type": "ImageBlend", "inputs": {"image1": ["C", 0], "image2": ["E", 0],
                                                      "blend_factor": 0.5, "blend_mode": "normal"}},
         "C": invert(["B", 0]), "E": invert(["B", 0])}, None,
        failed(""),
        {"B": entry([cycle("B", ["B", "E"], "B (ImageBlend) -> E (ImageInvert) -> B (ImageBlend)")],
                    ["S"], "ImageBlend"),
         "E": entry([cycle("E", ["B", "E"], "B (ImageBlend) -> E (ImageInvert) -> B (ImageBlend)")],
                    ["S"], "ImageInvert"),
         "C": entry([cycle("C", ["B", "C"], "B (ImageBlend) -> C (ImageInvert) -> B (ImageBlend)")],
                    ["S"], "ImageInvert")},
        id="dependency_cycle-two-cycles-through-one-node"),
    # Errors on the output and upstream: only the output's own errors make the details.
    pytest.param(
        {"1": empty(width=0), "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}, None,
        failed("Required input is missing: filename_prefix"),
        {"1": entry([too_small("width", WIDTH_CONFIG, 0, 1)], ["9"], "EmptyImage"),
         "9": entry([required_missing("filename_prefix")], ["9"], "SaveImage")},
        id="prompt_outputs_failed_validation-output-and-upstream"),
    # Two failing outputs: details join both outputs' lines; a shared upstream error is recorded
    # once and names both outputs; the merely-invalid node in between is not listed.
    pytest.param(
        {"1": empty(height=0), "2": invert(["1", 0]),
         "8": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
         "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": 5, "x": 1}},
         "10": {"class_type": "PreviewImage", "inputs": {}}}, None,
        failed("Required input is missing: filename_prefix\nRequired input is missing: images"),
        {"1": entry([too_small("height", WIDTH_CONFIG, 0, 1)], ["8", "9"], "EmptyImage"),
         "8": entry([required_missing("filename_prefix")], ["8"], "SaveImage"),
         "10": entry([required_missing("images")], ["10"], "PreviewImage")},
        id="prompt_outputs_failed_validation-several-outputs"),
    # Node ids are opaque strings.
    pytest.param(
        {"12:5": empty(width=0), "KSampler.0": invert(["12:5", 0]), "out/9": save(["KSampler.0", 0])}, None,
        failed(""),
        {"12:5": entry([too_small("width", WIDTH_CONFIG, 0, 1)], ["out/9"], "EmptyImage")},
        id="string-node-ids-in-node_errors"),
]


@pytest.mark.parametrize("prompt, targets, error, node_errors", NODE_FAILURES)
def test_node_failures(env, prompt, targets, error, node_errors):
    result = run(prompt, env, targets)
    assert not result.ok
    assert result.outputs == []
    assert result.error == error
    assert result.node_errors == node_errors


# ---------------------------------------------------------------- successes


VALID = [
    pytest.param({"1": empty(), "2": invert(["1", 0]), "9": save(["2", 0])}, None, ["9"], id="simple-chain"),
    pytest.param({"9": save(["2", 0]), "3": save(["1", 0]), "2": invert(["1", 0]), "1": empty()}, None, ["9", "3"],
                 id="outputs-in-prompt-order"),
    pytest.param({"1": load("a.png"), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, None,
                 ["2"], id="load-existing-input-file"),
    pytest.param({"1": load("done.png [output]"), "2": save(["1", 0])}, None, ["2"],
                 id="load-annotated-output-file"),
    pytest.param({"1": empty(), "2": save(["1", 0]), "3": save(["1", 0])}, ["3"], ["3"], id="targets-restrict"),
    pytest.param({"1": empty(), "2": save(["1", 0]), "3": save(["1", 0])}, [3, "1", "nope"], ["3"],
                 id="targets-int-ids-and-non-outputs-ignored"),
    pytest.param({"1": empty(width=0), "2": save(["1", 0]), "3": empty(), "4": save(["3", 0])}, ["4"], ["4"],
                 id="targets-skip-broken-output"),
    pytest.param({"1": empty(), "2": save(["1", 0]), "5": empty(width=0), "6": invert(["404", 0]),
                  "7": scale(["5", 0], upscale_method="foo")}, None, ["2"],
                 id="disconnected-broken-nodes-ignored"),
    pytest.param({"1": {**empty(), "_meta": {"title": "Canvas"}},
                  "2": {**save(["1", 0]), "_meta": {"title": 5, "bogus": [1, 2, 3]}}}, None, ["2"],
                 id="meta-ignored"),
    pytest.param({"1": empty(), "2": {**save(["1", 0]), "inputs": {**save(["1", 0])["inputs"], "extra": ["404", 0],
                                                                   "other": [1, 2, 3]}}}, None, ["2"],
                 id="undeclared-inputs-skipped"),
    pytest.param({"1": {"class_type": "ShowText", "inputs": {"text": "hi"}}}, None, ["1"],
                 id="optional-inputs-may-be-absent"),
    pytest.param({"1": empty(), "2": {"class_type": "ShowText", "inputs": {"text": "hi", "anything": ["1", 0]}}},
                 None, ["2"], id="wildcard-input-accepts-any-link"),
    pytest.param({"1": invert("not a link"), "2": save(["1", 0])}, None, ["2"],
                 id="constant-into-image-input-not-type-checked"),
    pytest.param({"KSampler.0": empty(), "12:5": invert(["KSampler.0", 0]), "a b/c": save(["12:5", 0]),
                  "-1": save(["KSampler.0", 0]), "": save(["12:5", 0])},
                 ["a b/c", "", "-1"], ["a b/c", "-1", ""], id="string-node-ids"),
]


@pytest.mark.parametrize("prompt, targets, outputs", VALID)
def test_valid_prompts(env, prompt, targets, outputs):
    result = run(prompt, env, targets)
    assert result.ok, (result.error, result.node_errors)
    assert result.error is None
    assert result.outputs == outputs
    assert result.node_errors == {}
    assert result.prompt is prompt


def test_partial_success_queues_only_the_valid_output(env):
    prompt = {"1": empty(), "2": save(["1", 0], "good"), "3": save(["4", 0], "bad"), "4": empty(width=0)}
    result = run(prompt, env)
    assert result.ok
    assert result.error is None
    assert result.outputs == ["2"]
    assert result.node_errors == {"4": entry([too_small("width", WIDTH_CONFIG, 0, 1)], ["3"], "EmptyImage")}


def test_partial_success_with_a_cycle_under_the_other_output(env):
    prompt = {"1": empty(), "2": save(["1", 0]), "3": invert(["4", 0]), "4": invert(["3", 0]), "5": save(["3", 0])}
    result = run(prompt, env)
    assert result.ok
    assert result.outputs == ["2"]
    assert result.node_errors == {
        "3": entry([cycle("3", ["3", "4"], "3 (ImageInvert) -> 4 (ImageInvert) -> 3 (ImageInvert)")],
                   ["5"], "ImageInvert"),
        "4": entry([cycle("4", ["3", "4"], "3 (ImageInvert) -> 4 (ImageInvert) -> 3 (ImageInvert)")],
                   ["5"], "ImageInvert"),
    }


# ---------------------------------------------------------------- coercion in place

COERCIONS = [
    pytest.param(empty(width="64"), "width", 64, int, id="int-from-string"),
    pytest.param(empty(width=3.9), "width", 3, int, id="int-truncates-float"),
    pytest.param(empty(width=True), "width", 1, int, id="int-from-bool"),
    pytest.param(empty(width={"__value__": "32"}), "width", 32, int, id="int-from-__value__"),
    pytest.param({"class_type": "ImageScaleBy", "inputs": {"image": ["0", 0], "upscale_method": "area", "scale_by": 2}},
                 "scale_by", 2.0, float, id="float-from-int"),
    pytest.param({"class_type": "ImageScaleBy", "inputs": {"image": ["0", 0], "upscale_method": "area",
                                                            "scale_by": "0.5"}},
                 "scale_by", 0.5, float, id="float-from-string"),
    pytest.param(save(["0", 0], prefix=123), "filename_prefix", "123", str, id="string-from-int"),
    pytest.param(save(["0", 0], prefix={"__value__": [1, 2]}), "filename_prefix", "[1, 2]", str,
                 id="__value__-list-is-a-constant"),
    pytest.param(scale(["0", 0], upscale_method={"__value__": "area"}), "upscale_method", "area", str,
                 id="combo-from-__value__"),
]


@pytest.mark.parametrize("node, name, expected, type_", COERCIONS)
def test_coercion_happens_in_place(env, node, name, expected, type_):
    prompt = {"0": empty(), "1": node}
    if not REGISTRY[node["class_type"]].OUTPUT_NODE:
        prompt["9"] = save(["1", 0])
    result = run(prompt, env)
    assert result.ok, (result.error, result.node_errors)
    assert result.prompt is prompt
    value = prompt["1"]["inputs"][name]
    assert value == expected
    assert type(value) is type_


def test_coerced_values_are_the_ones_stored(env):
    prompt = {"1": empty(width="64", height=3.9), "9": save(["1", 0])}
    run(prompt, env)
    assert prompt["1"]["inputs"] == {"width": 64, "height": 3, "batch_size": 1, "color": 0}
    assert prompt["9"]["inputs"] == {"images": ["1", 0], "filename_prefix": "out"}


# ---------------------------------------------------------------- deep graphs


@pytest.mark.parametrize("length", [500, 5000])
def test_long_chain_validates_without_recursion_error(env, length):
    prompt = {"0": empty()}
    for index in range(1, length):
        prompt[str(index)] = invert([str(index - 1), 0])
    prompt["out"] = save([str(length - 1), 0])
    result = run(prompt, env)
    assert result.ok
    assert result.outputs == ["out"]
    assert result.node_errors == {}


def test_long_chain_reports_the_error_at_its_far_end(env):
    prompt = {"0": empty(width="0")}
    for index in range(1, 500):
        prompt[str(index)] = invert([str(index - 1), 0])
    prompt["out"] = save(["499", 0])
    result = run(prompt, env)
    assert result.error == failed("")
    assert result.node_errors == {"0": entry([too_small("width", WIDTH_CONFIG, 0, 1)], ["out"], "EmptyImage")}


class Exploding(Node):
    """A test node whose custom validation raises."""

    OUTPUT_NODE = True
    CUSTOM_VALIDATED_INPUTS = ("text",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"text": ["STRING"]}, "optional": {"value": ["INT"]}}

    @classmethod
    def validate_input(cls, env, name, value):
        raise RuntimeError(f"cannot check {value}")


class Passing(Node):
    """A test node that raises during validation and feeds others."""

    RETURN_TYPES = ("INT",)
    CUSTOM_VALIDATED_INPUTS = ("seed",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"seed": ["INT"]}}

    @classmethod
    def validate_input(cls, env, name, value):
        raise ValueError("no seeds today")


class PickV3(Node):
    OUTPUT_NODE = True

    @classmethod
    def input_types(cls, env):
        return {"required": {"mode": ["COMBO", {"options": ["a", "b"]}],
                             "modes": ["COMBO", {"options": ["a", "b"], "multiselect": True}]}}


def test_exception_in_an_output_node_is_exception_during_validation(tmp_path):
    registry = default_registry(extra=[Exploding, Passing, PickV3])
    env = NodeEnvironment(LocalStorage({k: tmp_path / k for k in ("output", "input", "temp")}))
    result = validate_prompt({"1": {"class_type": "Exploding", "inputs": {"text": "x"}}}, registry, env)
    assert result.error["type"] == "prompt_outputs_failed_validation"
    (error,) = result.node_errors["1"]["errors"]
    assert error["type"] == "exception_during_validation"
    assert error["message"] == "Exception when validating node" and error["details"] == "cannot check x"
    assert error["extra_info"]["exception_type"] == "RuntimeError" and error["extra_info"]["traceback"]


class Consumer(Node):
    OUTPUT_NODE = True

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT"]}}


def test_exception_in_an_upstream_node_is_reported_on_it(tmp_path):
    registry = default_registry(extra=[Passing, PickV3, Consumer])
    env = NodeEnvironment(LocalStorage({k: tmp_path / k for k in ("output", "input", "temp")}))
    prompt = {"1": {"class_type": "Passing", "inputs": {"seed": 3}},
              "2": {"class_type": "PickV3", "inputs": {"mode": "a", "modes": {"__value__": ["a"]}}},
              "3": {"class_type": "Consumer", "inputs": {"value": ["1", 0]}}}
    result = validate_prompt(prompt, registry, env)
    assert result.ok and result.outputs == ["2"]
    (error,) = result.node_errors["1"]["errors"]
    assert error["type"] == "exception_during_inner_validation" and error["details"] == "no seeds today"
    assert error["extra_info"]["input_name"] == "value" and error["extra_info"]["linked_node"] == ["1", 0]
    assert error["extra_info"]["exception_type"] == "ValueError"
    assert result.node_errors["1"]["dependent_outputs"] == ["3"]


def test_v3_combo_options_are_checked(tmp_path):
    registry = default_registry(extra=[PickV3])
    env = NodeEnvironment(LocalStorage({k: tmp_path / k for k in ("output", "input", "temp")}))
    good = validate_prompt({"1": {"class_type": "PickV3", "inputs": {"mode": "b", "modes": {"__value__": ["a", "b"]}}}},
                           registry, env)
    assert good.ok
    bad = validate_prompt({"1": {"class_type": "PickV3", "inputs": {"mode": "c", "modes": {"__value__": ["a"]}}}}, registry, env)
    assert bad.node_errors["1"]["errors"][0]["details"] == "mode: 'c' not in ['a', 'b']"
    bad = validate_prompt({"1": {"class_type": "PickV3", "inputs": {"mode": "a", "modes": {"__value__": ["a", "z"]}}}},
                          registry, env)
    assert bad.node_errors["1"]["errors"][0]["extra_info"]["received_value"] == "z"
