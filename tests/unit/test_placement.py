"""Which queued prompt an idle worker takes: eligibility by model files, retries elsewhere, affinity."""

from __future__ import annotations

from farm.queue.placement import Candidate, choose, files_of, loaded_checkpoints, missing_files


def candidate(prompt_id, ckpt=None, front=False, lost_on=(), overdue=False, extra=()):
    needs = frozenset(([f"checkpoints/{ckpt}"] if ckpt else []) + list(extra))
    return Candidate(prompt_id, 0, front, needs, tuple(lost_on), overdue)


def never(_candidate):
    return False


def test_without_loaded_models_the_queue_order_wins():
    queue = [candidate("a", "x"), candidate("b", "y")]
    assert choose(queue, "w", frozenset(), 16, never).index == 0


def test_affinity_takes_the_first_prompt_whose_checkpoint_is_loaded_and_marks_what_it_passed():
    queue = [candidate("a", "x"), candidate("b", "x"), candidate("c", "y"), candidate("d", "y")]
    choice = choose(queue, "w", frozenset({"checkpoints/y"}), 16, never)
    assert (choice.index, choice.passed) == (2, (0, 1))


def test_a_prompt_that_loads_no_checkpoint_counts_as_loaded():
    queue = [candidate("a", "x"), candidate("b", extra=["loras/l.safetensors"]), candidate("c", "y")]
    assert choose(queue, "w", frozenset({"checkpoints/y"}), 16, never).index == 1


def test_affinity_never_passes_a_front_prompt_and_looks_only_within_the_lookahead():
    front_first = [candidate("f", "x", front=True), candidate("b", "y")]
    assert choose(front_first, "w", frozenset({"checkpoints/y"}), 16, never).index == 0
    front_later = [candidate("a", "x"), candidate("f", "x", front=True), candidate("c", "y")]
    assert choose(front_later, "w", frozenset({"checkpoints/y"}), 16, never).index == 0
    far = [candidate("a", "x"), candidate("b", "x"), candidate("c", "y")]
    assert choose(far, "w", frozenset({"checkpoints/y"}), 2, never).index == 0
    assert choose(far, "w", frozenset({"checkpoints/y"}), 0, never).index == 0


def test_a_prompt_passed_over_for_too_long_is_taken_first():
    queue = [candidate("a", "x"), candidate("b", "x", overdue=True), candidate("c", "y")]
    choice = choose(queue, "w", frozenset({"checkpoints/y"}), 16, never)
    assert (choice.index, choice.passed) == (1, ())


def test_a_lost_prompt_is_left_to_another_worker_that_can_run_it():
    queue = [candidate("a", "x", lost_on=["w"]), candidate("b", "x")]
    assert choose(queue, "w", frozenset(), 16, lambda c: True).index == 1
    # No other worker can run it: this one retries it rather than leave it waiting.
    assert choose(queue, "w", frozenset(), 16, never).index == 0
    assert choose([candidate("a", "x", lost_on=["w"])], "w", frozenset(), 16, lambda c: True) is None


def test_worker_reports_become_file_sets():
    assert files_of({"checkpoints": ["a.safetensors", "sub/b.ckpt"], "loras": ["l.pt"]}) == {
        "checkpoints/a.safetensors", "checkpoints/sub/b.ckpt", "loras/l.pt"}
    loaded = [{"name": "a.safetensors", "component": "checkpoint", "file": "checkpoints/a.safetensors"},
              {"name": "v.safetensors", "component": "vae", "file": "vae/v.safetensors"},
              {"name": "l", "component": "loras"}]
    assert loaded_checkpoints(loaded) == {"checkpoints/a.safetensors"}


def test_missing_files_names_what_the_best_equipped_worker_lacks():
    needs = frozenset({"checkpoints/a", "loras/b"})
    assert missing_files(needs, [frozenset({"checkpoints/a"}), frozenset()]) == ["loras/b"]
    assert missing_files(needs, []) == ["checkpoints/a", "loras/b"]
    assert missing_files(needs, [needs]) == []
