"""The render farm's core: settings, database, nodes, graph execution, dispatch and workers."""

__version__ = "0.1.0"
