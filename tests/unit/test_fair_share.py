"""Fair share between teams: ranking alone, then the dispatcher serving teams by share, bursts,
max_running and max_queued on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import random

import pytest
from sqlalchemy import select, update

from farm.db.models import Prompt, PromptState
from farm.queue.fair_share import TeamLimits, TeamLoad, ranked
from farm.services import batch_submit, batches, teams, workers
from farm.services.principal import LOCAL, Principal
from farm.services.submit import submit_prompt
from tests.workflows import invert_workflow

T0 = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)


def load(name, in_use, share=1.0, burst=None, max_running=None, waited=0, work=True):
    head = T0 - dt.timedelta(seconds=waited) if work else None
    return TeamLoad(name, TeamLimits(share, burst, max_running), in_use, head)


# ranking ----------------------------------------------------------------------------------------
def test_the_most_starved_team_ranks_first_then_the_longest_waiting():
    order = ranked([load("big", 6, share=3), load("small", 1, share=1), load("idle", 0, waited=5),
                    load("idle2", 0, waited=50)])
    assert [team.name for team in order] == ["idle2", "idle", "small", "big"]  # 0, 0, 1/1, 6/3


def test_caps_and_empty_queues_and_zero_shares():
    order = ranked([load("capped", 2, burst=2), load("quota", 1, max_running=1), load("nothing", 0, work=False),
                    load("leftovers", 0, share=0), load("normal", 5)])
    assert [team.name for team in order] == ["normal", "leftovers"]  # a share of 0 only gets what is left


# the dispatcher ---------------------------------------------------------------------------------
@pytest.fixture
def farm(context):
    for name, limits in {"a": teams.TeamLimits(share=3), "b": teams.TeamLimits(share=1)}.items():
        teams.create_team(context.database, name, limits, LOCAL)
    context.teams._ttl = 0  # team changes are seen at once in these tests
    return context


def start_workers(context, count: int) -> list[str]:
    names = [f"w{index}" for index in range(count)]
    for name in names:
        workers.register(context.database, workers.WorkerInfo(
            name=name, session=f"s-{name}", queue=f"farm.gpu.{name}", host="h", pid=1, gpu_index=None,
            device_name="cpu", device_type="cpu", version="test"), context.settings)
    return names


def batch_of(context, team: str, cells: int) -> list[str]:
    body = {"workflow": invert_workflow(), "sweep": {"1.width": {"range": [8, 8 + cells - 1]}}}
    return batch_submit.create(context, body, Principal(team, "submit", f"key-{team}"))["prompt_ids"]


def running(context) -> list[tuple[str, str]]:
    """(prompt_id, team) of every dispatched or running prompt."""
    with context.database.reading() as session:
        return [tuple(row) for row in session.execute(
            select(Prompt.prompt_id, Prompt.team).where(Prompt.state.in_(["dispatched", "running"])))]


def finish(context, prompt_id: str) -> None:
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id == prompt_id).values(
            state=PromptState.SUCCESS.value, outputs={}, messages=[]))


def test_a_small_team_starts_on_the_next_free_worker_behind_a_500_cell_batch(farm, sender):
    big = batch_of(farm, "a", 500)
    start_workers(farm, 4)
    farm.dispatcher.dispatch()
    assert collections.Counter(team for _, team in running(farm)) == {"a": 4}
    single = submit_prompt(farm, {"prompt": invert_workflow(0x00FF00)}, Principal("b", "submit", "key-b")).body
    assert single["prompt_id"] not in {prompt_id for prompt_id, _ in running(farm)}  # every worker is busy
    finish(farm, running(farm)[0][0])
    farm.dispatcher.dispatch()
    assert single["prompt_id"] in {prompt_id for prompt_id, _ in running(farm)}
    assert len(big) == 500


def test_long_run_slot_usage_follows_the_shares_within_ten_percent(farm, sender):
    batch_of(farm, "a", 400)
    batch_of(farm, "b", 400)
    start_workers(farm, 8)
    farm.dispatcher.dispatch()
    chooser = random.Random(7)
    slots = collections.Counter()
    for step in range(160):
        active = running(farm)
        if step >= 20:  # after the start: each step is a moment of the steady state
            slots.update(team for _, team in active)
        finish(farm, chooser.choice(active)[0])
        farm.dispatcher.dispatch()
    total = sum(slots.values())
    assert abs(slots["a"] / total - 0.75) <= 0.075 and abs(slots["b"] / total - 0.25) <= 0.025 + 0.0001


def test_burst_and_max_running_cap_a_team_even_with_idle_workers(farm, sender):
    teams.update_team(farm.database, "b", {"burst": 2}, LOCAL)
    batch_of(farm, "b", 10)
    start_workers(farm, 4)
    farm.dispatcher.dispatch()
    assert collections.Counter(team for _, team in running(farm)) == {"b": 2}
    teams.update_team(farm.database, "b", {"burst": None, "max_running": 3}, LOCAL)
    farm.dispatcher.dispatch()
    assert collections.Counter(team for _, team in running(farm)) == {"b": 3}
    # The idle worker serves anyone else.
    batch_of(farm, "a", 3)
    farm.dispatcher.dispatch()
    assert collections.Counter(team for _, team in running(farm)) == {"b": 3, "a": 1}


def test_one_team_farms_keep_comfyuis_order_exactly(context, sender, client):
    start_workers(context, 1)
    ids = [client.post("/prompt", data=json.dumps({"prompt": invert_workflow(i)})).get_json()["prompt_id"]
           for i in range(3)]
    front = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(9), "front": True})).get_json()[
        "prompt_id"]
    order = [prompt_id for prompt_id, _ in running(context)]
    for _ in range(3):
        finish(context, order[-1])
        context.dispatcher.dispatch()
        order += [prompt_id for prompt_id, _ in running(context) if prompt_id not in order]
    assert order == [ids[0], front, ids[1], ids[2]]


def test_max_queued_refuses_prompts_and_batches_beyond_it_with_429(farm):
    teams.update_team(farm.database, "b", {"max_queued": 3}, LOCAL)
    b = Principal("b", "submit", "key-b")
    batch_of(farm, "b", 2)
    assert submit_prompt(farm, {"prompt": invert_workflow()}, b).status == 200
    refused = submit_prompt(farm, {"prompt": invert_workflow()}, b)
    assert refused.status == 429 and refused.body["error"]["type"] == "queue_quota_exceeded"
    assert refused.body["error"]["extra_info"] == {"team": "b", "max_queued": 3, "pending": 3}
    with pytest.raises(batches.BatchError) as raised:
        batch_of(farm, "b", 1)
    assert raised.value.status == 429
    assert submit_prompt(farm, {"prompt": invert_workflow()}, Principal("a", "submit", "key-a")).status == 200
