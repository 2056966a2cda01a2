"""The registry of node classes by ComfyUI class_type, built explicitly from node families."""

from __future__ import annotations

from typing import Iterable, Mapping

from farm.nodes.base import Node


class NodeRegistry(Mapping[str, type[Node]]):
    def __init__(self, classes: Iterable[type[Node]]):
        self._classes: dict[str, type[Node]] = {}
        for cls in classes:
            if cls.CLASS_TYPE in self._classes:
                raise ValueError(f"two node classes named {cls.CLASS_TYPE}")
            self._classes[cls.CLASS_TYPE] = cls

    def __getitem__(self, class_type: str) -> type[Node]:
        return self._classes[class_type]

    def __iter__(self):
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


def node_module_classes(module_names: Iterable[str]) -> list[type[Node]]:
    """The NODES of each named module (FARM_NODE_MODULES): node packs outside the farm, such as the
    test pack. A module that cannot be imported or has no NODES is an error at start, not later."""
    from importlib import import_module

    classes: list[type[Node]] = []
    for name in module_names:
        try:
            module = import_module(name)
        except ImportError as exception:
            raise ValueError(f"node module {name!r} (FARM_NODE_MODULES) cannot be imported: {exception}") from None
        nodes = getattr(module, "NODES", None)
        if not isinstance(nodes, (tuple, list)) or not all(isinstance(c, type) and issubclass(c, Node) for c in nodes):
            raise ValueError(f"node module {name!r} (FARM_NODE_MODULES) has no NODES tuple of node classes")
        classes.extend(nodes)
    return classes


def default_registry(extra: Iterable[type[Node]] = ()) -> NodeRegistry:
    """Every node family the farm ships, plus `extra` classes (tests, plugins)."""
    from farm.nodes import conditioning, image, image_io, latent, loaders, sampling, vae

    # Roughly ComfyUI's own order (it lists nodes.py's classes starting with KSampler).
    families = (sampling, loaders, conditioning, latent, vae, image, image_io)
    return NodeRegistry([*(cls for family in families for cls in family.NODES), *extra])
