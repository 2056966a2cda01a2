"""A test-only node pack: cheap nodes for executor tests (no torch)."""

from __future__ import annotations

from farm.nodes.base import Interrupted, Node, NodeOutput


class Number(Node):
    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT", {"default": 0}]}}

    def run(self, ctx, value):
        return NodeOutput((value,))


class Add(Node):
    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"a": ["INT"], "b": ["INT"]}}

    def run(self, ctx, a, b):
        return NodeOutput((a + b,))


class Show(Node):
    """An output node that reports its value, the node id and the prompt it ran in."""

    OUTPUT_NODE = True
    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT"]},
                "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def run(self, ctx, value, prompt=None, unique_id=None, extra_pnginfo=None):
        return NodeOutput((value,), {"text": [str(value)], "node": [unique_id], "nodes": [len(prompt)],
                                     "pnginfo": [extra_pnginfo]})


class Fail(Node):
    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT"]}}

    def run(self, ctx, value):
        raise ValueError(f"cannot use {value}")


class Steps(Node):
    """Reports progress per step, as a sampler does."""

    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"steps": ["INT"]}}

    def run(self, ctx, steps):
        for step in range(steps):
            ctx.report_progress(step + 1, steps)
        return NodeOutput((steps,))


NODES = (Number, Add, Show, Fail, Steps)
__all__ = ["Interrupted", "NODES"]
