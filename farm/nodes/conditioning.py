"""Conditioning nodes: prompt encoding (SD1/SD2/SDXL) and the list operations on CONDITIONING.

The text work is in farm.engine.text, the list operations in farm.engine.latents.
"""

from __future__ import annotations

from farm.nodes.base import MAX_RESOLUTION, Node, NodeOutput
from farm.nodes.loaders import use_components

PROMPT = {"multiline": True, "dynamicPrompts": True}


def _require_clip(clip) -> None:
    if clip is None:
        raise ValueError("clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your "
                         "checkpoint does not contain a valid clip or text encoder model.")


def _size(default: int) -> list:
    return ["INT", {"default": default, "min": 0, "max": MAX_RESOLUTION}]


class CLIPTextEncode(Node):
    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.")
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "text": ["STRING", {**PROMPT, "tooltip": "The text to be encoded."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
        }}

    def run(self, ctx, text, clip):
        from farm.engine import text as engine

        _require_clip(clip)
        use_components(ctx, clip)
        return NodeOutput(values=(engine.encode_text(clip, text),))


class CLIPTextEncodeSDXL(Node):
    CATEGORY = "advanced/conditioning"
    PYTHON_MODULE = "comfy_extras.nodes_clip_sdxl"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "clip": ["CLIP"],
            "width": _size(1024),
            "height": _size(1024),
            "crop_w": _size(0),
            "crop_h": _size(0),
            "target_width": _size(1024),
            "target_height": _size(1024),
            "text_g": ["STRING", dict(PROMPT)],
            "text_l": ["STRING", dict(PROMPT)],
        }}

    def run(self, ctx, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        from farm.engine import text as engine

        _require_clip(clip)
        use_components(ctx, clip)
        conditioning = engine.encode_sdxl(clip, text_g, text_l, width, height, crop_w, crop_h,
                                          target_width, target_height)
        return NodeOutput(values=(conditioning,))


class CLIPTextEncodeSDXLRefiner(Node):
    CATEGORY = "advanced/conditioning"
    PYTHON_MODULE = "comfy_extras.nodes_clip_sdxl"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "ascore": ["FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}],
            "width": _size(1024),
            "height": _size(1024),
            "text": ["STRING", dict(PROMPT)],
            "clip": ["CLIP"],
        }}

    def run(self, ctx, ascore, width, height, text, clip):
        from farm.engine import text as engine

        _require_clip(clip)
        use_components(ctx, clip)
        return NodeOutput(values=(engine.encode_sdxl_refiner(clip, text, ascore, width, height),))


class ConditioningCombine(Node):
    DISPLAY_NAME = "Conditioning (Combine)"
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"conditioning_1": ["CONDITIONING"], "conditioning_2": ["CONDITIONING"]}}

    def run(self, ctx, conditioning_1, conditioning_2):
        from farm.engine import latents

        return NodeOutput(values=(latents.combine(conditioning_1, conditioning_2),))


class ConditioningAverage(Node):
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "conditioning_to": ["CONDITIONING"],
            "conditioning_from": ["CONDITIONING"],
            "conditioning_to_strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
        }}

    def run(self, ctx, conditioning_to, conditioning_from, conditioning_to_strength):
        from farm.engine import latents

        return NodeOutput(values=(latents.average(conditioning_to, conditioning_from, conditioning_to_strength),))


class ConditioningConcat(Node):
    DISPLAY_NAME = "Conditioning (Concat)"
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"conditioning_to": ["CONDITIONING"], "conditioning_from": ["CONDITIONING"]}}

    def run(self, ctx, conditioning_to, conditioning_from):
        from farm.engine import latents

        return NodeOutput(values=(latents.concat(conditioning_to, conditioning_from),))


class ConditioningSetArea(Node):
    DISPLAY_NAME = "Conditioning (Set Area)"
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        def position(default: int, minimum: int) -> list:
            return ["INT", {"default": default, "min": minimum, "max": MAX_RESOLUTION, "step": 8}]

        return {"required": {
            "conditioning": ["CONDITIONING"],
            "width": position(64, 64),
            "height": position(64, 64),
            "x": position(0, 0),
            "y": position(0, 0),
            "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}],
        }}

    def run(self, ctx, conditioning, width, height, x, y, strength):
        from farm.engine import latents

        return NodeOutput(values=(latents.set_area(conditioning, width, height, x, y, strength),))


class ConditioningZeroOut(Node):
    CATEGORY = "advanced/conditioning"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"conditioning": ["CONDITIONING"]}}

    def run(self, ctx, conditioning):
        from farm.engine import latents

        return NodeOutput(values=(latents.zero_out(conditioning),))


NODES = (
    CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, ConditioningCombine, ConditioningAverage,
    ConditioningConcat, ConditioningSetArea, ConditioningZeroOut,
)
