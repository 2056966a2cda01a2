"""What a node is: a class with its ComfyUI schema and a thin `run` method.

Schemas use ComfyUI's wire format (`INPUT_TYPES` shapes) so `/object_info` serves them as they
are. Node modules import no torch: heavy work lives in `farm.engine`, imported inside `run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

MAX_RESOLUTION = 16384


@dataclasses.dataclass(frozen=True)
class NodeOutput:
    """What a node run returns: its output values (one per RETURN_TYPES) and its UI dict."""

    values: tuple = ()
    ui: dict | None = None


class Interrupted(Exception):
    """Raised inside a prompt when it is interrupted (or the worker is shutting down)."""


class PromptTimeout(Exception):
    """Raised inside a prompt that ran past the farm's prompt timeout: the prompt fails."""

    exception_type = "Timeout"  # what execution_error and the history call it


@dataclasses.dataclass
class RunContext:
    """What a running node may use besides its inputs."""

    prompt_id: str
    node_id: str
    storage: Any  # farm.storage.Storage
    check_interrupt: Callable[[], None] = lambda: None
    report_progress: Callable[[float, float], None] = lambda value, maximum: None
    models: Any = None  # the worker's model cache (farm.engine.model_cache.ModelCache)
    # Set only when previews are wanted: takes a function returning (image MIME type, image bytes),
    # called only if the next progress report is due a preview.
    preview: Callable[[Callable[[], tuple[str, bytes]]], None] | None = None
    # A coalesced group this prompt runs in (farm.graph.group.CoalescedGroup): its sampler (and
    # on GPUs its VAE decode) meet the other members' there. None: the prompt runs alone.
    group: Any = None


class ModelChoices(list):
    """A combo of model files: the files of one models folder type, remembering which folder, so
    validation can record the files a prompt needs and look again for a file that just appeared."""

    def __init__(self, files, folder: str):
        super().__init__(files)
        self.folder = folder


class NodeEnvironment:
    """What schemas may depend on: the input files, and the model files the workers can load."""

    def __init__(self, storage, models_dir=None, models=None):
        from farm.models import LocalModelInventory

        self.storage = storage
        self.models_dir = models_dir
        # Anything with files(folder): the workers' reports in the web, the local folder on a worker.
        self.models = models if models is not None else LocalModelInventory(models_dir)

    def input_images(self) -> list[str]:
        return self.storage.list_images("input")

    def model_files(self, folder: str) -> ModelChoices:
        return ModelChoices(self.models.files(folder), folder)

    def model_file_appeared(self, folder: str, name: str) -> bool:
        """Whether `name` exists in `folder` now, looking again past any cached listing (a model
        copied in a moment ago is usable at once, as in ComfyUI)."""
        appeared = getattr(self.models, "appeared", None)
        return bool(appeared is not None and appeared(folder, name))


class Node:
    """Base class of every node; subclasses set the class attributes and implement `run`."""

    CLASS_TYPE: ClassVar[str] = ""  # defaults to the class name
    DISPLAY_NAME: ClassVar[str | None] = None
    CATEGORY: ClassVar[str] = "sd"
    DESCRIPTION: ClassVar[str] = ""
    PYTHON_MODULE: ClassVar[str] = "nodes"
    OUTPUT_NODE: ClassVar[bool] = False
    RETURN_TYPES: ClassVar[tuple] = ()
    RETURN_NAMES: ClassVar[tuple | None] = None
    OUTPUT_TOOLTIPS: ClassVar[tuple | None] = None
    OUTPUT_IS_LIST: ClassVar[tuple | None] = None
    DEPRECATED: ClassVar[bool] = False
    EXPERIMENTAL: ClassVar[bool] = False
    # Inputs checked by `validate_input` instead of the type, range and combo checks.
    CUSTOM_VALIDATED_INPUTS: ClassVar[tuple[str, ...]] = ()
    # True when two runs with the same inputs may differ: the cache then keys on the node id too.
    NOT_IDEMPOTENT: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("CLASS_TYPE"):
            cls.CLASS_TYPE = cls.__name__

    @classmethod
    def input_types(cls, env: NodeEnvironment) -> dict:
        """ComfyUI's INPUT_TYPES: {"required": {name: [TYPE, {options}]}, "optional", "hidden"}."""
        return {"required": {}}

    @classmethod
    def fingerprint(cls, env: NodeEnvironment, inputs: dict):
        """ComfyUI's IS_CHANGED: a value that changes when the node must run again although its
        inputs did not (a file on disk that changed, say). Part of the execution-cache signature."""
        return None

    @classmethod
    def validate_input(cls, env: NodeEnvironment, name: str, value) -> str | None:
        """For CUSTOM_VALIDATED_INPUTS: an error text, or None when `value` is acceptable."""
        return None

    def run(self, ctx: RunContext, **inputs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def info(cls, env: NodeEnvironment) -> dict:
        """The node's `/object_info` entry."""
        inputs = cls.input_types(env)
        outputs = list(cls.RETURN_TYPES)
        entry = {
            "input": inputs,
            "input_order": {section: list(values) for section, values in inputs.items()},
            "output": outputs,
            "output_is_list": list(cls.OUTPUT_IS_LIST or [False] * len(outputs)),
            "output_name": list(cls.RETURN_NAMES or outputs),
            "name": cls.CLASS_TYPE,
            "display_name": cls.DISPLAY_NAME or cls.CLASS_TYPE,
            "description": cls.DESCRIPTION,
            "python_module": cls.PYTHON_MODULE,
            "category": cls.CATEGORY,
            "output_node": cls.OUTPUT_NODE,
        }
        if cls.OUTPUT_TOOLTIPS is not None:
            entry["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
        # Only when true: V1 clients read an absent flag as false.
        for key, flag in (("deprecated", cls.DEPRECATED), ("experimental", cls.EXPERIMENTAL)):
            if flag:
                entry[key] = True
        return entry
