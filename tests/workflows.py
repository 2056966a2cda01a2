"""Model-free workflows used across the tests."""

from __future__ import annotations


def invert_workflow(color: int = 0xFF0000, size: int = 8, prefix: str = "ComfyUI") -> dict:
    """EmptyImage -> ImageInvert -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix},
              "_meta": {"title": "Save Image"}},
    }
