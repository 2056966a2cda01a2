"""Nodes that read images from and write images to storage: LoadImage, SaveImage, PreviewImage."""

from __future__ import annotations

import datetime
import hashlib
import json
import posixpath
import random
import string

from farm.nodes.base import Node, NodeOutput
from farm.storage import PathRejected, split_prefix

HIDDEN_METADATA = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
# LoadImage values may end in a storage annotation; without one they name an input file.
ANNOTATIONS = {f" [{kind}]": kind for kind in ("output", "input", "temp")}


def expand_prefix(prefix: str, width: int, height: int, now: datetime.datetime) -> str:
    """The placeholders the server expands in a filename prefix (the frontend expands the rest)."""
    values = {
        "width": str(width), "height": str(height), "year": str(now.year),
        "month": f"{now.month:02}", "day": f"{now.day:02}",
        "hour": f"{now.hour:02}", "minute": f"{now.minute:02}", "second": f"{now.second:02}",
    }
    for name, value in values.items():
        prefix = prefix.replace(f"%{name}%", value)
    return prefix


def png_metadata(prompt, extra_pnginfo) -> dict[str, str]:
    """The tEXt chunks ComfyUI embeds: the API prompt and one chunk per extra_pnginfo key."""
    chunks = {} if prompt is None else {"prompt": json.dumps(prompt)}
    for key, value in (extra_pnginfo or {}).items():
        chunks[key] = json.dumps(value)
    return chunks


def save_images(ctx, images, prefix: str, kind: str, compress_level: int, prompt, extra_pnginfo) -> NodeOutput:
    """Write each image of the batch as a numbered PNG in `kind` storage; the UI lists them."""
    from farm.engine.images import encode_png

    if "%" in prefix:
        prefix = expand_prefix(prefix, images.shape[2], images.shape[1], datetime.datetime.now())
    subfolder, basename = split_prefix(prefix)
    chunks = png_metadata(prompt, extra_pnginfo)
    saved = []
    for index, image in enumerate(images):
        ctx.check_interrupt()
        png = encode_png(image, chunks, compress_level=compress_level)
        name = basename.replace("%batch_num%", str(index))
        filename = ctx.storage.write_numbered(kind, subfolder, name, ".png", png)
        saved.append({"filename": filename, "subfolder": subfolder, "type": kind})
    return NodeOutput(values=(), ui={"images": saved})


class SaveImage(Node):
    DISPLAY_NAME = "Save Image"
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def input_types(cls, env):
        return {
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": ["STRING", {
                    "default": "ComfyUI",
                    "tooltip": "The prefix for the file to save. This may include formatting information such as "
                               "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                }],
            },
            "hidden": dict(HIDDEN_METADATA),
        }

    def run(self, ctx, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        return save_images(ctx, images, filename_prefix, "output", 4, prompt, extra_pnginfo)


class PreviewImage(SaveImage):
    """SaveImage into temp storage, fast compression, under a prefix unique to the run."""

    DISPLAY_NAME = "Preview Image"

    @classmethod
    def input_types(cls, env):
        return {"required": {"images": ["IMAGE"]}, "hidden": dict(HIDDEN_METADATA)}

    def run(self, ctx, images, prompt=None, extra_pnginfo=None):
        prefix = "ComfyUI_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))
        return save_images(ctx, images, prefix, "temp", 1, prompt, extra_pnginfo)


def image_reference(value: str) -> tuple[str, str, str]:
    """A LoadImage value as (kind, subfolder, filename): `sub/a.png [output]` -> output, sub, a.png."""
    kind = "input"
    for annotation, annotated_kind in ANNOTATIONS.items():
        if value.endswith(annotation):
            value, kind = value[: -len(annotation)], annotated_kind
            break
    subfolder, filename = posixpath.split(value)
    return kind, subfolder, filename


class LoadImage(Node):
    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    CUSTOM_VALIDATED_INPUTS = ("image",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"image": [sorted(env.input_images()), {"image_upload": True}]}}

    @classmethod
    def validate_input(cls, env, name, value) -> str | None:
        """Replaces the combo check, as VALIDATE_INPUTS does: any existing file is accepted."""
        if isinstance(value, str):
            try:
                if env.storage.exists(*image_reference(value)):
                    return None
            except PathRejected:
                pass
        return f"Invalid image file: {value}"

    @classmethod
    def fingerprint(cls, env, inputs):
        """The file's sha256: editing the image makes the node load it again (ComfyUI's rule)."""
        value = inputs.get("image")
        try:
            with env.storage.open(*image_reference(value)) as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except (OSError, PathRejected, TypeError, ValueError):
            return float("nan")  # unreadable: never equal, so never served from the cache

    def run(self, ctx, image):
        from farm.engine.images import load_image

        with ctx.storage.open(*image_reference(image)) as handle:
            pixels, mask = load_image(handle)
        return NodeOutput(values=(pixels, mask))


NODES = (LoadImage, SaveImage, PreviewImage)
