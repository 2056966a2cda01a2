"""GET /object_info and /object_info/<class>: whole V1 entries, in order (spec comfyui-api.md §3.11)."""

from __future__ import annotations

import json

import pytest

from farm.nodes.base import MAX_RESOLUTION, Node
from farm.nodes.registry import default_registry

SAVE_PREFIX_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such as "
    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
)

SAVE_IMAGE = {
    "input": {
        "required": {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": SAVE_PREFIX_TOOLTIP}],
        },
        "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
    },
    "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]},
    "output": [],
    "output_is_list": [],
    "output_name": [],
    "name": "SaveImage",
    "display_name": "Save Image",
    "description": "Saves the input images to your ComfyUI output directory.",
    "python_module": "nodes",
    "category": "image",
    "output_node": True,
}

EMPTY_IMAGE = {
    "input": {"required": {
        "width": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
        "height": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
        "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}],
    }},
    "input_order": {"required": ["width", "height", "batch_size", "color"]},
    "output": ["IMAGE"],
    "output_is_list": [False],
    "output_name": ["IMAGE"],
    "name": "EmptyImage",
    "display_name": "Empty Image",
    "description": "",
    "python_module": "nodes",
    "category": "image",
    "output_node": False,
}

IMAGE_SCALE = {
    "input": {"required": {
        "image": ["IMAGE"],
        "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
        "width": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
        "height": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
        "crop": [["disabled", "center"]],
    }},
    "input_order": {"required": ["image", "upscale_method", "width", "height", "crop"]},
    "output": ["IMAGE"],
    "output_is_list": [False],
    "output_name": ["IMAGE"],
    "name": "ImageScale",
    "display_name": "Upscale Image",
    "description": "",
    "python_module": "nodes",
    "category": "image/upscaling",
    "output_node": False,
}


def load_image_entry(files: list[str]) -> dict:
    return {
        "input": {"required": {"image": [files, {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
        "output_is_list": [False, False],
        "output_name": ["IMAGE", "MASK"],
        "name": "LoadImage",
        "display_name": "Load Image",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    }


def ordered(value):
    """`value` with every dict turned into its (key, value) list, so comparisons see key order."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


def get_json(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    # Parsed by hand: key order is part of what is compared.
    return json.loads(response.get_data(as_text=True))


@pytest.mark.parametrize("prefix", ["", "/api"])
@pytest.mark.parametrize("class_type, expected", [
    ("SaveImage", SAVE_IMAGE), ("EmptyImage", EMPTY_IMAGE), ("ImageScale", IMAGE_SCALE),
])
def test_entry_is_comfyui_v1_shape_in_order(client, prefix, class_type, expected):
    body = get_json(client, f"{prefix}/object_info/{class_type}")
    assert ordered(body) == ordered({class_type: expected})
    assert ordered(get_json(client, f"{prefix}/object_info")[class_type]) == ordered(expected)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_load_image_lists_input_images_and_follows_new_files(client, settings, prefix):
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    for name in ("b.png", "a.JPG", "notes.txt"):
        (settings.input_dir / name).write_bytes(b"x")
    (settings.input_dir / "sub").mkdir()
    (settings.input_dir / "sub" / "nested.png").write_bytes(b"x")

    body = get_json(client, f"{prefix}/object_info/LoadImage")
    assert ordered(body) == ordered({"LoadImage": load_image_entry(["a.JPG", "b.png"])})

    (settings.input_dir / "0.webp").write_bytes(b"x")
    body = get_json(client, f"{prefix}/object_info")
    assert ordered(body["LoadImage"]) == ordered(load_image_entry(["0.webp", "a.JPG", "b.png"]))


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_every_registry_class_is_listed_in_registry_order(client, prefix):
    body = get_json(client, f"{prefix}/object_info")
    expected = list(default_registry())
    assert list(body) == expected
    assert {"EmptyImage", "ImageInvert", "ImageScale", "ImageScaleBy", "ImageBlend",
            "LoadImage", "SaveImage", "PreviewImage"} <= set(expected)
    assert all(body[name]["name"] == name for name in expected)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_unknown_class_is_an_empty_object(client, prefix):
    assert get_json(client, f"{prefix}/object_info/Unknown") == {}
    assert get_json(client, f"{prefix}/object_info/object_info") == {}


class Legacy(Node):
    """Test-only node: optional inputs, named list outputs, tooltips and the two flags."""

    CATEGORY = "testing"
    PYTHON_MODULE = "custom_nodes.farm_tests"
    DEPRECATED = True
    EXPERIMENTAL = True
    RETURN_TYPES = ("INT", "STRING")
    RETURN_NAMES = ("count", "labels")
    OUTPUT_IS_LIST = (False, True)
    OUTPUT_TOOLTIPS = ("How many.", "One label each.")

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT,FLOAT"]}, "optional": {"label": ["STRING", {"multiline": True}]}}


class Broken(Node):
    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        raise RuntimeError("schema cannot be built")


@pytest.fixture
def extended_client(settings):
    from farm.services.context import make_context
    from web import create_app

    context = make_context(settings, registry=default_registry(extra=[Legacy, Broken]))
    yield create_app(settings, context=context).test_client()
    context.database.dispose()


def test_optional_section_lists_and_flags_only_when_defined(extended_client):
    assert ordered(get_json(extended_client, "/object_info/Legacy")) == ordered({"Legacy": {
        "input": {"required": {"value": ["INT,FLOAT"]}, "optional": {"label": ["STRING", {"multiline": True}]}},
        "input_order": {"required": ["value"], "optional": ["label"]},
        "output": ["INT", "STRING"],
        "output_is_list": [False, True],
        "output_name": ["count", "labels"],
        "name": "Legacy",
        "display_name": "Legacy",
        "description": "",
        "python_module": "custom_nodes.farm_tests",
        "category": "testing",
        "output_node": False,
        "output_tooltips": ["How many.", "One label each."],
        "deprecated": True,
        "experimental": True,
    }})


def test_a_node_whose_schema_fails_is_left_out_and_logged(extended_client, caplog):
    body = get_json(extended_client, "/object_info")
    assert list(body) == [*default_registry(), "Legacy"]
    assert "Broken" in caplog.text and "schema cannot be built" in caplog.text
    assert get_json(extended_client, "/object_info/Broken") == {}


def test_object_info_and_validation_read_the_same_files(client, settings):
    """A file the combo offers is accepted by POST /prompt; one it does not offer is refused."""
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    (settings.input_dir / "photo.png").write_bytes(b"x")
    offered = get_json(client, "/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    assert offered == ["photo.png"]

    def submit(name):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }
        return client.post("/prompt", data=json.dumps({"prompt": prompt}))

    assert submit(offered[0]).status_code == 200
    refused = submit("missing.png")
    assert refused.status_code == 400
    assert [error["details"] for error in refused.get_json()["node_errors"]["1"]["errors"]] == [
        "image - Invalid image file: missing.png"]
