"""Image nodes that make, scale, invert and blend IMAGE tensors (the torch work is in farm.engine)."""

from __future__ import annotations

from farm.nodes.base import MAX_RESOLUTION, Node, NodeOutput

# Spelled out here rather than imported from farm.engine.images, which would pull torch in.
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")


def _size(default: int, minimum: int) -> list:
    return ["INT", {"default": default, "min": minimum, "max": MAX_RESOLUTION, "step": 1}]


class EmptyImage(Node):
    DISPLAY_NAME = "Empty Image"
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "width": _size(512, 1),
            "height": _size(512, 1),
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}],
        }}

    def run(self, ctx, width, height, batch_size=1, color=0):
        from farm.engine import images

        return NodeOutput(values=(images.solid(width, height, batch_size, color),))


class ImageInvert(Node):
    DISPLAY_NAME = "Invert Image"
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"image": ["IMAGE"]}}

    def run(self, ctx, image):
        from farm.engine import images

        return NodeOutput(values=(images.invert(image),))


class ImageScale(Node):
    DISPLAY_NAME = "Upscale Image"
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "image": ["IMAGE"],
            "upscale_method": [list(UPSCALE_METHODS)],
            "width": _size(512, 0),
            "height": _size(512, 0),
            "crop": [list(CROP_METHODS)],
        }}

    def run(self, ctx, image, upscale_method, width, height, crop):
        from farm.engine import images

        if width == 0 and height == 0:
            return NodeOutput(values=(image,))
        width, height = images.scale_dimensions(image.shape[2], image.shape[1], width, height)
        return NodeOutput(values=(images.upscale(image, width, height, upscale_method, crop),))


class ImageScaleBy(Node):
    DISPLAY_NAME = "Upscale Image By"
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "image": ["IMAGE"],
            "upscale_method": [list(UPSCALE_METHODS)],
            "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
        }}

    def run(self, ctx, image, upscale_method, scale_by):
        from farm.engine import images

        # ComfyUI would fail on a 0-pixel side; one pixel is the nearest meaningful answer.
        width = max(1, round(image.shape[2] * scale_by))
        height = max(1, round(image.shape[1] * scale_by))
        return NodeOutput(values=(images.upscale(image, width, height, upscale_method, "disabled"),))


class ImageBlend(Node):
    DISPLAY_NAME = "Image Blend"
    CATEGORY = "image/postprocessing"
    PYTHON_MODULE = "comfy_extras.nodes_post_processing"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "image1": ["IMAGE"],
            "image2": ["IMAGE"],
            "blend_factor": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}],
            "blend_mode": [list(BLEND_MODES)],
        }}

    def run(self, ctx, image1, image2, blend_factor, blend_mode):
        from farm.engine import images

        return NodeOutput(values=(images.blend(image1, image2, blend_factor, blend_mode),))


NODES = (EmptyImage, ImageInvert, ImageScale, ImageScaleBy, ImageBlend)
