"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A models folder with two tiny SD1 checkpoints (a, b) and a LoRA (l) made for the first."""
    from tests.engine.tiny_checkpoints import make_sd1, make_sd1_lora  # torch: only where the test runs

    folder = tmp_path_factory.mktemp("models")
    first = make_sd1(folder / "a.safetensors", seed=1)
    make_sd1(folder / "b.safetensors", seed=2)
    make_sd1_lora(folder / "l.safetensors", first, seed=3)
    return folder
