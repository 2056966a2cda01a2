"""Latent nodes: make, resize, composite, blend and batch LATENT values (torch work in farm.engine.latents)."""

from __future__ import annotations

from farm.nodes.base import MAX_RESOLUTION, Node, NodeOutput

# Spelled out here rather than imported from farm.engine, which would pull torch in.
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")


def _pixels(default: int, minimum: int = 0) -> list:
    return ["INT", {"default": default, "min": minimum, "max": MAX_RESOLUTION, "step": 8}]


class EmptyLatentImage(Node):
    DISPLAY_NAME = "Empty Latent Image"
    CATEGORY = "latent"
    DESCRIPTION = "Create a new batch of empty latent images to be denoised via sampling."
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The empty latent image batch.",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "width": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                              "tooltip": "The width of the latent images in pixels."}],
            "height": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                               "tooltip": "The height of the latent images in pixels."}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images in the batch."}],
        }}

    def run(self, ctx, width, height, batch_size=1):
        from farm.engine import latents

        return NodeOutput(values=(latents.empty(width, height, batch_size),))


class LatentUpscale(Node):
    DISPLAY_NAME = "Upscale Latent"
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "samples": ["LATENT"],
            "upscale_method": [list(UPSCALE_METHODS)],
            "width": _pixels(512),
            "height": _pixels(512),
            "crop": [list(CROP_METHODS)],
        }}

    def run(self, ctx, samples, upscale_method, width, height, crop):
        from farm.engine import latents

        return NodeOutput(values=(latents.upscale(samples, upscale_method, width, height, crop),))


class LatentUpscaleBy(Node):
    DISPLAY_NAME = "Upscale Latent By"
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "samples": ["LATENT"],
            "upscale_method": [list(UPSCALE_METHODS)],
            "scale_by": ["FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}],
        }}

    def run(self, ctx, samples, upscale_method, scale_by):
        from farm.engine import latents

        return NodeOutput(values=(latents.upscale_by(samples, upscale_method, scale_by),))


class LatentComposite(Node):
    DISPLAY_NAME = "Latent Composite"
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "samples_to": ["LATENT"],
            "samples_from": ["LATENT"],
            "x": _pixels(0),
            "y": _pixels(0),
            "feather": _pixels(0),
        }}

    def run(self, ctx, samples_to, samples_from, x, y, feather):
        from farm.engine import latents

        return NodeOutput(values=(latents.composite(samples_to, samples_from, x, y, feather),))


class LatentBlend(Node):
    DISPLAY_NAME = "Latent Blend"
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "samples1": ["LATENT"],
            "samples2": ["LATENT"],
            "blend_factor": ["FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}],
        }}

    def run(self, ctx, samples1, samples2, blend_factor):
        from farm.engine import latents

        return NodeOutput(values=(latents.blend(samples1, samples2, blend_factor),))


class RepeatLatentBatch(Node):
    DISPLAY_NAME = "Repeat Latent Batch"
    CATEGORY = "latent/batch"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"samples": ["LATENT"], "amount": ["INT", {"default": 1, "min": 1, "max": 64}]}}

    def run(self, ctx, samples, amount):
        from farm.engine import latents

        return NodeOutput(values=(latents.repeat_batch(samples, amount),))


class LatentFromBatch(Node):
    DISPLAY_NAME = "Latent From Batch"
    CATEGORY = "latent/batch"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "samples": ["LATENT"],
            "batch_index": ["INT", {"default": 0, "min": 0, "max": 63}],
            "length": ["INT", {"default": 1, "min": 1, "max": 64}],
        }}

    def run(self, ctx, samples, batch_index, length):
        from farm.engine import latents

        return NodeOutput(values=(latents.from_batch(samples, batch_index, length),))


class SetLatentNoiseMask(Node):
    DISPLAY_NAME = "Set Latent Noise Mask"
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"samples": ["LATENT"], "mask": ["MASK"]}}

    def run(self, ctx, samples, mask):
        from farm.engine import latents

        return NodeOutput(values=(latents.set_noise_mask(samples, mask),))


NODES = (
    EmptyLatentImage, LatentUpscale, LatentUpscaleBy, LatentComposite, LatentBlend, RepeatLatentBatch,
    LatentFromBatch, SetLatentNoiseMask,
)
