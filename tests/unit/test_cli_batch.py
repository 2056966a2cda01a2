"""`farm submit`'s argument forms: sweeps, workflow files, and what it refuses."""

from __future__ import annotations

import json

import pytest

from farm.cli_batch import CliError
from farm.cli_submit import load_workflow, parse_sweep_arg


@pytest.mark.parametrize(("text", "expected"), [
    ("3.seed=1..100", ("3.seed", {"range": [1, 100]})),
    ("3.seed=0..100..10", ("3.seed", {"range": [0, 100, 10]})),
    ("3.cfg=5,7.5,9", ("3.cfg", [5, 7.5, 9])),
    ("6.text=a cat,a dog", ("6.text", ["a cat", "a dog"])),
    ('6.text=["a, b", "c"]', ("6.text", ["a, b", "c"])),
])
def test_sweep_arguments(text, expected):
    assert parse_sweep_arg(text) == expected


def test_a_sweep_from_a_file_takes_one_value_per_line(tmp_path):
    values = tmp_path / "prompts.txt"
    values.write_text("a red fox\n\na blue whale, at night\n")
    assert parse_sweep_arg(f"6.text=@{values}") == ("6.text", ["a red fox", "a blue whale, at night"])


@pytest.mark.parametrize(("text", "message"), [
    ("seed=1..2", "NODE.INPUT=VALUES"), ("3.seed", "NODE.INPUT=VALUES"), ("3.seed=1..x", "whole numbers"),
    ("3.seed=1..2..3..4", "START..STOP"), ("6.text=@/nonexistent/file", "cannot read"),
])
def test_bad_sweep_arguments_say_how_to_write_them(text, message):
    with pytest.raises(CliError, match=message):
        parse_sweep_arg(text)


def test_ui_format_files_are_refused_with_what_to_do(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": []}))
    with pytest.raises(CliError, match=r"UI-format .* Export \(API\)"):
        load_workflow(str(ui))
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(CliError, match="not an API-format workflow"):
        load_workflow(str(other))
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
    assert load_workflow(str(api)) == {"1": {"class_type": "EmptyImage", "inputs": {}}}
