"""Sweep expansion: lists, ranges, product and zip, rows from CSV / JSON Lines, and its errors."""

from __future__ import annotations

import pytest

from farm.services.sweep import SweepError, apply, parse_rows, parse_sweep


def test_product_changes_the_last_axis_fastest():
    sweep = parse_sweep({"6.text": ["a cat", "a dog"], "3.seed": {"range": [1, 3]}})
    assert sweep.count() == 6
    assert list(sweep.cells()) == [
        {"6.text": "a cat", "3.seed": 1}, {"6.text": "a cat", "3.seed": 2}, {"6.text": "a cat", "3.seed": 3},
        {"6.text": "a dog", "3.seed": 1}, {"6.text": "a dog", "3.seed": 2}, {"6.text": "a dog", "3.seed": 3},
    ]


def test_zip_pairs_values_and_needs_equal_lengths():
    sweep = parse_sweep({"6.text": ["a", "b", "c"], "3.seed": {"range": [10, 30, 10]}}, "zip")
    assert list(sweep.cells()) == [{"6.text": "a", "3.seed": 10}, {"6.text": "b", "3.seed": 20},
                                   {"6.text": "c", "3.seed": 30}]
    with pytest.raises(SweepError, match=r"same number of values \(6.text: 2, 3.seed: 3\)"):
        parse_sweep({"6.text": ["a", "b"], "3.seed": {"range": [1, 3]}}, "zip")


def test_ranges_include_their_end_and_may_step_down():
    assert list(parse_sweep({"3.seed": {"range": [5, 1, -2]}}).cells()) == [{"3.seed": 5}, {"3.seed": 3},
                                                                              {"3.seed": 1}]
    big = parse_sweep({"3.seed": {"range": [1, 1000]}})
    assert big.count() == 1000 and big.distinct_values() == {"3.seed": [1, 1000]}
    assert big.to_json() == {"mode": "product", "axes": {"3.seed": {"range": [1, 1000, 1]}}}


@pytest.mark.parametrize(("spec", "mode", "message"), [
    ({"seed": [1]}, None, "must be '<node id>.<input name>'"),
    ({".seed": [1]}, None, "must be '<node id>.<input name>'"),
    ({"3.seed": []}, None, "empty list"),
    ({"3.seed": {"range": [1]}}, None, "range must be"),
    ({"3.seed": {"range": [1, 2.5]}}, None, "range must be"),
    ({"3.seed": {"range": [5, 1]}}, None, "holds no value"),
    ({"3.seed": {"range": [1, 5, 0]}}, None, "holds no value"),
    ({"3.seed": 7}, None, "must be a list of values"),
    ({"3.seed": [1]}, "diagonal", "mode must be"),
    (["3.seed"], None, "sweep must be an object"),
])
def test_malformed_sweeps_say_what_is_wrong(spec, mode, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep(spec, mode)


def test_the_cell_limit_is_checked_before_expanding_anything():
    with pytest.raises(SweepError, match=r"makes 1000000000000 cells, more than the 1000000 .*FARM_MAX_BATCH_CELLS"):
        parse_sweep({"3.seed": {"range": [1, 1_000_000]}, "5.width": {"range": [1, 1_000_000]}})
    with pytest.raises(SweepError, match="3 rows is more than the 2"):
        parse_sweep(None, rows=[{"3.seed": 1}] * 3, max_cells=2)


def test_rows_from_csv_and_json_lines():
    csv_rows = parse_rows('6.text,3.seed,3.cfg\n"a cat, sitting",7,7.5\na dog,8,true\n', "prompts.csv")
    assert csv_rows == [{"6.text": "a cat, sitting", "3.seed": 7, "3.cfg": 7.5},
                        {"6.text": "a dog", "3.seed": 8, "3.cfg": True}]
    jsonl = parse_rows('{"6.text": "a cat", "3.seed": 1}\n\n{"6.text": "a dog", "3.seed": 2}\n', "rows.jsonl")
    sweep = parse_sweep(None, rows=jsonl)
    assert sweep.count() == 2 and sweep.keys == ["6.text", "3.seed"]
    assert list(sweep.cells())[1] == {"6.text": "a dog", "3.seed": 2}
    with pytest.raises(SweepError, match="line 2 of rows.jsonl is not JSON"):
        parse_rows('{"3.seed": 1}\n{nope}\n', "rows.jsonl")
    with pytest.raises(SweepError, match="row 1 must be an object"):
        parse_sweep(None, rows=[{"3.seed": 1}, []])
    with pytest.raises(SweepError, match="a sweep or rows, not both"):
        parse_sweep({"3.seed": [1]}, rows=[{"3.seed": 1}])


def test_apply_sets_inputs_without_touching_the_base():
    base = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}}, "6": {"class_type": "X", "inputs": {}}}
    cell = apply(base, {"3.seed": 42})
    assert cell["3"]["inputs"] == {"seed": 42, "steps": 20} and base["3"]["inputs"]["seed"] == 1
    assert cell["6"] is base["6"]
