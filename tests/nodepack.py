"""A test-only node pack: cheap nodes for executor tests (no torch)."""

from __future__ import annotations

import os
import time

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


class Sleep(Node):
    """Sleeps `ms` milliseconds in steps of at most 50 ms, checking for interrupts, then passes its
    value on: a stand-in for a GPU-bound node that leaves the CPU idle."""

    RETURN_TYPES = ("INT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT", {"default": 0}], "ms": ["INT", {"default": 200, "min": 0}]}}

    def run(self, ctx, value, ms):
        deadline = time.monotonic() + ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            ctx.check_interrupt()
            time.sleep(min(left, 0.05))
        ctx.check_interrupt()
        return NodeOutput((value,))


class Block(Node):
    """Waits, without checking for interrupts, until the file `path` exists (or `seconds` pass):
    a node that holds its worker the way a long checkpoint load does. With `hold_models` it waits
    inside the model cache's load, holding the cache's lock as a real load from slow storage does."""

    RETURN_TYPES = ("INT",)
    NOT_IDEMPOTENT = True

    @classmethod
    def input_types(cls, env):
        return {"required": {"value": ["INT", {"default": 0}], "path": ["STRING", {"default": ""}],
                             "seconds": ["FLOAT", {"default": 30.0, "min": 0.0}]},
                "optional": {"hold_models": ["BOOLEAN", {"default": False}]}}

    def run(self, ctx, value, path, seconds, hold_models=False):
        def wait():
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not (path and os.path.exists(path)):
                time.sleep(0.02)
            return (None,)

        if hold_models and ctx.models is not None:
            ctx.models._get(("test-block", ctx.prompt_id), "test-block", wait)
        else:
            wait()
        return NodeOutput((value,))


class ModelName(Node):
    """An output node that needs a checkpoint file: on a worker it fails unless the file is in its
    own models folder, so a prompt placed on a worker without the file shows it."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def input_types(cls, env):
        return {"required": {"ckpt_name": [env.model_files("checkpoints")], "value": ["INT", {"default": 0}]}}

    def run(self, ctx, ckpt_name, value):
        from farm.nodes.loaders import model_path

        if ctx.models is not None:
            model_path(ctx, "checkpoints", ckpt_name, "ckpt_name")
        return NodeOutput((), {"text": [ckpt_name]})


NODES = (Number, Add, Show, Fail, Steps, Sleep, Block, ModelName)
__all__ = ["Interrupted", "NODES"]
