"""Image nodes end to end on CPU tensors: schemas, pixels, saved files and loaded files."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The dev install has the worker extras; a web-only install skips these rather than failing.
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from farm.engine import images as engine  # noqa: E402
from farm.nodes.base import Interrupted, MAX_RESOLUTION, NodeEnvironment, RunContext  # noqa: E402
from farm.nodes.image import EmptyImage, ImageBlend, ImageInvert, ImageScale, ImageScaleBy  # noqa: E402
from farm.nodes.image_io import LoadImage, PreviewImage, SaveImage, expand_prefix  # noqa: E402
from farm.storage import LocalStorage, PathRejected  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def storage(tmp_path):
    return LocalStorage({"output": tmp_path / "out", "input": tmp_path / "in", "temp": tmp_path / "temp"})


@pytest.fixture
def ctx(storage):
    return RunContext(prompt_id="p", node_id="1", storage=storage)


@pytest.fixture
def env(storage):
    return NodeEnvironment(storage)


def only_value(output):
    (value,) = output.values
    return value


def constant(value, height=4, width=4, batch=1):
    return torch.full((batch, height, width, 3), value, dtype=torch.float32)


def write_png(path: Path, image: Image.Image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# EmptyImage and ImageInvert

def test_empty_image_has_size_batch_and_color(ctx):
    image = only_value(EmptyImage().run(ctx, width=32, height=16, batch_size=3, color=0x336699))
    assert image.shape == (3, 16, 32, 3) and image.dtype == torch.float32
    expected = torch.tensor([0x33 / 255, 0x66 / 255, 0x99 / 255])
    assert torch.equal(image[2, 15, 31], expected.float())
    assert torch.equal(image, image[0, 0].expand_as(image))


def test_empty_image_schema(env):
    required = EmptyImage.info(env)["input"]["required"]
    assert required["width"] == ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}]
    assert required["batch_size"] == ["INT", {"default": 1, "min": 1, "max": 4096}]
    assert required["color"] == ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}]
    assert EmptyImage.info(env)["output"] == ["IMAGE"]


def test_invert_flips_pixels(ctx):
    image = torch.tensor([[[[0.0, 0.25, 1.0]]]])
    assert torch.equal(only_value(ImageInvert().run(ctx, image=image)), torch.tensor([[[[1.0, 0.75, 0.0]]]]))


# ImageScale and ImageScaleBy

@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_image_scale_sizes_for_each_method(ctx, method):
    source = torch.rand(2, 10, 20, 3)
    scaled = only_value(ImageScale().run(ctx, image=source, upscale_method=method, width=30, height=7, crop="disabled"))
    assert scaled.shape == (2, 7, 30, 3)
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_image_scale_zero_side_keeps_aspect_ratio(ctx):
    source = torch.rand(1, 10, 20, 3)
    by_height = only_value(ImageScale().run(ctx, image=source, upscale_method="bilinear", width=0, height=30, crop="disabled"))
    by_width = only_value(ImageScale().run(ctx, image=source, upscale_method="bilinear", width=5, height=0, crop="disabled"))
    assert by_height.shape == (1, 30, 60, 3)
    assert by_width.shape == (1, 2, 5, 3)  # round(10 * 5 / 20) = round(2.5) = 2
    assert only_value(ImageScale().run(ctx, image=source, upscale_method="lanczos", width=0, height=0, crop="disabled")) is source


def test_scale_dimensions_rule():
    assert engine.scale_dimensions(20, 10, 0, 0) == (20, 10)
    assert engine.scale_dimensions(20, 10, 0, 1) == (2, 1)
    assert engine.scale_dimensions(1000, 10, 1, 0) == (1, 1)  # never 0
    assert engine.scale_dimensions(20, 10, 7, 9) == (7, 9)


def test_image_scale_center_crop_keeps_the_middle(ctx):
    columns = torch.arange(6, dtype=torch.float32) / 8
    source = columns.view(1, 1, 6, 1).expand(1, 2, 6, 3).clone()
    scaled = only_value(ImageScale().run(ctx, image=source, upscale_method="nearest-exact", width=2, height=2, crop="center"))
    assert scaled[0, 0, :, 0].tolist() == [2 / 8, 3 / 8]  # crops 2 columns each side, then 2 -> 2
    uncropped = only_value(ImageScale().run(ctx, image=source, upscale_method="nearest-exact", width=2, height=2, crop="disabled"))
    assert uncropped[0, 0, :, 0].tolist() == [1 / 8, 4 / 8]  # samples at 1.5 and 4.5


def test_area_averages_and_bicubic_stays_in_range():
    checker = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 2, 2, 1).expand(1, 2, 2, 3)
    assert torch.allclose(engine.upscale(checker, 1, 1, "area"), torch.full((1, 1, 1, 3), 0.5))
    sharp = engine.upscale(checker, 9, 9, "bicubic")
    assert sharp.min() == 0 and sharp.max() == 1


def test_lanczos_goes_through_8_bits():
    image = constant(0.5, height=6, width=6)
    scaled = engine.upscale(image, 3, 3, "lanczos")
    assert torch.equal(scaled, constant(127 / 255, height=3, width=3))


def test_image_scale_by(ctx, env):
    source = torch.rand(1, 10, 20, 3)
    scaled = only_value(ImageScaleBy().run(ctx, image=source, upscale_method="bicubic", scale_by=1.55))
    assert scaled.shape == (1, 16, 31, 3)  # round(15.5) = 16, round(31.0) = 31
    info = ImageScaleBy.info(env)
    assert info["input"]["required"]["scale_by"] == ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]
    assert info["category"] == "image/upscaling"


def test_image_scale_schema(env):
    info = ImageScale.info(env)
    assert info["input"]["required"]["upscale_method"] == [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]]
    assert info["input"]["required"]["crop"] == [["disabled", "center"]]
    assert info["input"]["required"]["width"] == ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}]
    assert info["input_order"]["required"] == ["image", "upscale_method", "width", "height", "crop"]
    assert (info["display_name"], info["python_module"]) == ("Upscale Image", "nodes")


# ImageBlend

@pytest.mark.parametrize("mode, pixel1, pixel2, expected", [
    ("normal", 0.2, 0.6, 0.6),
    ("multiply", 0.2, 0.6, 0.12),
    ("screen", 0.2, 0.6, 1 - 0.8 * 0.4),
    ("overlay", 0.2, 0.6, 2 * 0.2 * 0.6),
    ("overlay", 0.7, 0.2, 1 - 2 * 0.3 * 0.8),
    ("soft_light", 0.7, 0.2, 0.7 - 0.6 * 0.7 * 0.3),
    ("soft_light", 0.2, 0.6, 0.2 + 0.2 * (((16 * 0.2 - 12) * 0.2 + 4) * 0.2 - 0.2)),
    ("soft_light", 0.64, 0.6, 0.64 + 0.2 * (0.8 - 0.64)),
    ("difference", 0.7, 0.2, 0.5),
    ("difference", 0.2, 0.6, 0.0),  # negative differences clamp to black
])
def test_blend_modes_at_full_factor(ctx, mode, pixel1, pixel2, expected):
    out = only_value(ImageBlend().run(ctx, image1=constant(pixel1), image2=constant(pixel2), blend_factor=1.0, blend_mode=mode))
    assert torch.allclose(out, constant(expected), atol=1e-6)


def test_blend_factor_mixes_with_image1(ctx):
    out = only_value(ImageBlend().run(ctx, image1=constant(0.2), image2=constant(0.6), blend_factor=0.25, blend_mode="multiply"))
    assert torch.allclose(out, constant(0.2 * 0.75 + 0.12 * 0.25))


def test_blend_fits_image2_to_image1(ctx, env):
    image2 = constant(0.6, height=8, width=8, batch=2)
    out = only_value(ImageBlend().run(ctx, image1=constant(0.2, height=4, width=6, batch=2), image2=image2, blend_factor=0.5, blend_mode="normal"))
    assert out.shape == (2, 4, 6, 3)
    assert torch.allclose(out, constant(0.4, height=4, width=6, batch=2))
    info = ImageBlend.info(env)
    assert (info["category"], info["python_module"]) == ("image/postprocessing", "comfy_extras.nodes_post_processing")
    assert info["input"]["required"]["blend_mode"] == [["normal", "multiply", "screen", "overlay", "soft_light", "difference"]]


# SaveImage and PreviewImage

def test_save_image_numbers_files_and_embeds_metadata(ctx, tmp_path):
    pixels = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 4, 1).expand(2, 3, 4, 3).clone()
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4}}}
    extra = {"workflow": {"nodes": [], "note": "héllo"}, "other": [1, 2]}
    first = SaveImage().run(ctx, images=pixels, filename_prefix="ComfyUI", prompt=prompt, extra_pnginfo=extra)
    assert first.values == ()
    assert first.ui == {"images": [
        {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
        {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"},
    ]}
    second = SaveImage().run(ctx, images=pixels[:1], filename_prefix="ComfyUI")
    assert second.ui["images"][0]["filename"] == "ComfyUI_00003_.png"

    with Image.open(tmp_path / "out" / "ComfyUI_00001_.png") as saved:
        assert saved.text == {"prompt": json.dumps(prompt), "workflow": json.dumps(extra["workflow"]), "other": "[1, 2]"}
        # 255 * x truncated: 63.75 -> 63, 127.5 -> 127
        assert np.array(saved)[0, :, 0].tolist() == [0, 63, 127, 255]
    with Image.open(tmp_path / "out" / "ComfyUI_00003_.png") as bare:
        assert "prompt" not in bare.text


def test_save_image_subfolder_prefix(ctx, tmp_path):
    out = SaveImage().run(ctx, images=constant(0.5), filename_prefix="a/b/img")
    assert out.ui["images"] == [{"filename": "img_00001_.png", "subfolder": "a/b", "type": "output"}]
    assert (tmp_path / "out" / "a" / "b" / "img_00001_.png").is_file()


def test_save_image_rejects_prefix_outside_output(ctx, tmp_path):
    with pytest.raises(PathRejected):
        SaveImage().run(ctx, images=constant(0.5), filename_prefix="../x")
    assert not list(tmp_path.glob("**/*.png"))


def test_save_image_placeholders(ctx):
    out = SaveImage().run(ctx, images=constant(0.5, height=16, width=32, batch=2), filename_prefix="s_%width%x%height%_%batch_num%")
    assert [entry["filename"] for entry in out.ui["images"]] == ["s_32x16_0_00001_.png", "s_32x16_1_00001_.png"]
    when = datetime.datetime(2024, 3, 5, 7, 8, 9)
    assert expand_prefix("%year%-%month%-%day% %hour%:%minute%:%second% %date:yyyy%", 1, 1, when) == "2024-03-05 07:08:09 %date:yyyy%"


def test_save_image_stops_when_interrupted(storage, tmp_path):
    calls = []

    def check_interrupt():
        calls.append(1)
        if len(calls) > 1:
            raise Interrupted()

    ctx = RunContext(prompt_id="p", node_id="1", storage=storage, check_interrupt=check_interrupt)
    with pytest.raises(Interrupted):
        SaveImage().run(ctx, images=constant(0.5, batch=3))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["ComfyUI_00001_.png"]


def test_save_image_info(env):
    info = SaveImage.info(env)
    assert info["input_order"] == {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]}
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert (info["output"], info["output_is_list"], info["output_name"]) == ([], [], [])
    assert info["output_node"] is True
    assert (info["name"], info["display_name"], info["category"]) == ("SaveImage", "Save Image", "image")
    assert info["description"] == "Saves the input images to your ComfyUI output directory."


def test_preview_image_writes_to_temp(ctx, tmp_path, env):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    out = PreviewImage().run(ctx, images=constant(0.5), prompt=prompt, extra_pnginfo={"workflow": {}})
    (entry,) = out.ui["images"]
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", entry["filename"])
    assert (entry["subfolder"], entry["type"]) == ("", "temp")
    with Image.open(tmp_path / "temp" / entry["filename"]) as saved:
        assert saved.text == {"prompt": json.dumps(prompt), "workflow": "{}"}
    assert not list((tmp_path / "out").glob("*"))
    info = PreviewImage.info(env)
    assert info["input_order"] == {"required": ["images"], "hidden": ["prompt", "extra_pnginfo"]}
    assert (info["name"], info["output_node"]) == ("PreviewImage", True)


# LoadImage

def test_load_image_rgba_mask_is_inverted_alpha(ctx, tmp_path):
    rgba = np.zeros((3, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 51
    rgba[0, 0, 3] = 255
    write_png(tmp_path / "in" / "sub" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    image, mask = LoadImage().run(ctx, image="sub/rgba.png").values
    assert image.shape == (1, 3, 5, 3) and mask.shape == (1, 3, 5)
    assert image[0, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert mask[0, 0, 0].item() == 0.0
    assert mask[0, 1, 1].item() == pytest.approx(0.8)


def test_load_image_rgb_from_output_has_empty_64_mask(ctx):
    SaveImage().run(ctx, images=constant(1.0, height=6, width=7))
    image, mask = LoadImage().run(ctx, image="ComfyUI_00001_.png [output]").values
    assert torch.equal(image, constant(1.0, height=6, width=7))
    assert torch.equal(mask, torch.zeros(1, 64, 64))


def test_load_image_annotations_pick_storage(ctx, tmp_path):
    for kind, value in (("in", 0.0), ("temp", 1.0)):
        write_png(tmp_path / kind / "same.png", Image.new("RGB", (2, 2), (int(value * 255),) * 3))
    plain = LoadImage().run(ctx, image="same.png").values[0]
    temp = LoadImage().run(ctx, image="same.png [temp]").values[0]
    explicit = LoadImage().run(ctx, image="same.png [input]").values[0]
    assert plain.max() == 0 and explicit.max() == 0 and temp.min() == 1


def test_load_image_mode_i_scales_to_8_bits(tmp_path):
    path = tmp_path / "deep.tif"
    Image.new("I", (4, 2), 51 * 255).save(path)
    image, _ = engine.load_image(path)
    assert torch.allclose(image, torch.full((1, 2, 4, 3), 0.2))


def test_load_image_frames_of_another_size_are_skipped(tmp_path):
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image, mask = engine.load_image(path)
    assert image.shape == (2, 4, 4, 3) and mask.shape == (2, 64, 64)
    assert image[1, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_load_image_validation(env, tmp_path):
    write_png(tmp_path / "in" / "there.png", Image.new("RGB", (2, 2)))
    assert LoadImage.validate_input(env, "image", "there.png") is None
    assert LoadImage.validate_input(env, "image", "missing.png") == "Invalid image file: missing.png"
    assert LoadImage.validate_input(env, "image", "there.png [output]") == "Invalid image file: there.png [output]"
    assert LoadImage.validate_input(env, "image", "../../etc/passwd") == "Invalid image file: ../../etc/passwd"
    assert LoadImage.validate_input(env, "image", 3) == "Invalid image file: 3"


def test_load_image_lists_input_images(env, tmp_path):
    for name in ("b.png", "a.jpg"):
        write_png(tmp_path / "in" / name, Image.new("RGB", (1, 1)))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    info = LoadImage.info(env)
    assert info["input"]["required"]["image"] == [["a.jpg", "b.png"], {"image_upload": True}]
    assert (info["output"], info["display_name"]) == (["IMAGE", "MASK"], "Load Image")


def test_node_modules_import_without_torch_or_numpy():
    code = "import sys, farm.nodes.image, farm.nodes.image_io; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
