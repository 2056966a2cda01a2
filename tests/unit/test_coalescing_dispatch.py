"""Which prompts a worker groups with the one it holds: the next ones it would take anyway, while
they share its coalescing key, never before a front prompt, never against fair share, caps or
eligibility."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from farm.db.models import Prompt
from farm.services import batch_submit, execution, teams, workers
from farm.services.principal import LOCAL, Principal
from farm.services.submit import submit_prompt
from tests.workflows import seed_workflow

FILES = frozenset({"checkpoints/tiny.safetensors", "checkpoints/other.safetensors"})


def start_worker(context, name: str = "w1", checkpoints=("tiny.safetensors", "other.safetensors")):
    info = workers.WorkerInfo(name=name, session=f"s-{name}", queue=f"farm.gpu.{name}", host="h", pid=1,
                              gpu_index=None, device_name="cpu", device_type="cpu", version="test")
    workers.register(context.database, info, context.settings)
    assert workers.report(context.database, info, {"model_files": {"checkpoints": list(checkpoints)}})
    return info


def sweep(context, cells: int, team: str = "default", **workflow) -> list[str]:
    body = {"workflow": seed_workflow(**workflow), "sweep": {"3.seed": {"range": [1, cells]}}}
    return batch_submit.create(context, body, Principal(team, "submit", f"key-{team}"))["prompt_ids"]


def hold_first(context, worker: str = "w1") -> execution.ClaimedPrompt:
    """The worker's first prompt, dispatched (submitting dispatches at once) and claimed as its
    message would have it claimed."""
    context.dispatcher.dispatch()
    with context.database.reading() as session:
        prompt_id, attempt = session.execute(select(Prompt.prompt_id, Prompt.attempt).where(
            Prompt.worker == worker, Prompt.state == "dispatched")).one()
    return execution.claim(context.database, prompt_id, attempt, worker)


def companions(context, head, count: int, worker: str = "w1", files=FILES) -> list[str]:
    found = execution.claim_companions(context.database, context.dispatcher, worker, files, frozenset(), head, count)
    return [claimed.prompt_id for claimed in found]


def states(context, ids) -> list[tuple[str, str | None]]:
    with context.database.reading() as session:
        rows = dict(session.execute(select(Prompt.prompt_id, Prompt.state).where(Prompt.prompt_id.in_(ids))).all())
    return [rows[prompt_id] for prompt_id in ids]


def test_a_sweep_is_grouped_in_queue_order_up_to_the_count(context, sender):
    start_worker(context)
    cells = sweep(context, 6)
    head = hold_first(context)
    assert head.prompt_id == cells[0] and head.coalesce_key is not None
    assert companions(context, head, 3) == cells[1:4]
    assert states(context, cells) == ["running"] * 4 + ["queued"] * 2


def test_prompts_of_another_kind_are_never_grouped(context, sender):
    start_worker(context)
    first = sweep(context, 2)
    other_steps = sweep(context, 2, steps=4)
    other_checkpoint = sweep(context, 2, ckpt_name="other.safetensors")
    more = sweep(context, 2)
    head = hold_first(context)
    assert companions(context, head, 10) == [first[1], *more]  # passing only its own team's other kinds
    assert states(context, other_steps + other_checkpoint) == ["queued"] * 4


def test_a_waiting_front_prompt_of_another_kind_stops_grouping(context, sender):
    start_worker(context)
    sweep(context, 4)
    head = hold_first(context)
    submit_prompt(context, {"prompt": seed_workflow(steps=5), "front": True}, LOCAL)
    assert companions(context, head, 3) == []


def test_only_prompts_the_worker_can_run_are_grouped(context, sender):
    start_worker(context, checkpoints=("tiny.safetensors",))
    cells = sweep(context, 3)
    head = hold_first(context)
    assert companions(context, head, 3, files=frozenset()) == []  # its report lost the checkpoint
    assert companions(context, head, 3) == cells[1:]


@pytest.fixture
def two_teams(context):
    for name in ("a", "b"):
        teams.create_team(context.database, name, teams.TeamLimits(share=1), LOCAL)
    context.teams._ttl = 0
    return context


def test_grouping_never_takes_a_slot_fair_share_would_give_another_team(two_teams, sender):
    context = two_teams
    start_worker(context)
    mine = sweep(context, 4, team="a")
    head = hold_first(context)
    assert head.prompt_id == mine[0]
    theirs = sweep(context, 1, team="b")
    assert companions(context, head, 3) == []  # b runs nothing: the next slot is b's
    assert states(context, theirs) == ["queued"]


def test_grouping_stops_at_the_teams_cap(two_teams, sender):
    context = two_teams
    teams.update_team(context.database, "a", {"max_running": 2}, LOCAL)
    start_worker(context)
    mine = sweep(context, 5, team="a")
    head = hold_first(context)
    assert companions(context, head, 4) == [mine[1]]


def test_a_prompt_without_a_key_is_never_grouped(context, sender):
    start_worker(context)
    from tests.workflows import invert_workflow

    for color in (1, 2):
        submit_prompt(context, {"prompt": invert_workflow(color)}, LOCAL)
    head = hold_first(context)
    assert head.coalesce_key is None and companions(context, head, 3) == []
