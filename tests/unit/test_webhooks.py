"""Webhooks from the outbox to a real local receiver: signed, retried after failures with backoff,
delivered once it recovers, batch completion told once, and shown on the batch."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from farm.db.models import PromptState, WebhookDelivery
from farm.services import execution, teams, webhooks, workers
from farm.services.principal import LOCAL
from tests.webhook_receiver import Receiver, verified
from tests.workflows import invert_workflow


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def deliveries(context) -> list[WebhookDelivery]:
    with context.database.reading() as session:
        return session.execute(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).scalars().all()


def time_passes(context) -> None:
    """Every pending delivery is due now (instead of waiting out its backoff)."""
    with context.database.write() as session:
        session.execute(update(WebhookDelivery).values(next_at=WebhookDelivery.created_at))


def run_cell(context, sender, hooks, state=PromptState.SUCCESS):
    assignment = sender.sent.pop(0)
    claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, assignment.worker)
    outputs = {"3": {"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}}
    recorded, _ = execution.finish_then(
        context.database, claimed, assignment.worker, state, outputs, [], None,
        notify=lambda connection: hooks.prompt_ended(connection, claimed.prompt_id, claimed.team, claimed.batch_id,
                                                     claimed.extra_data, state.value, outputs, None))
    assert recorded
    return claimed.prompt_id


def test_signed_deliveries_retried_until_the_receiver_recovers(client, context, sender, receiver):
    receiver.statuses = [500, 503]
    workers.register(context.database, workers.WorkerInfo(
        name="w1", session="s", queue="q", host="h", pid=1, gpu_index=None, device_name="cpu", device_type="cpu",
        version="t"), context.settings)
    body = client.post("/api/batches", data=json.dumps({
        "workflow": invert_workflow(), "sweep": {"1.width": [8, 9]}, "webhook": receiver.url("/batch")})).get_json()
    hooks = webhooks.PromptHooks()
    first = run_cell(context, sender, hooks)
    deliverer = webhooks.Deliverer(context.database)
    assert deliverer.run_once() == 1
    (row,) = deliveries(context)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, "500")
    assert deliverer.run_once() == 0  # backing off: not due yet
    time_passes(context)
    deliverer.run_once()
    time_passes(context)
    deliverer.run_once()
    (row,) = deliveries(context)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 3, "200")
    posts = receiver.posts
    assert len(posts) == 3 and len({post["headers"]["webhook-id"] for post in posts}) == 1  # one message, 3 tries
    secret = teams.webhook_secret(context.database, "default")
    assert all(verified(post, secret) for post in posts)
    assert not verified(posts[0], webhooks.new_secret())
    kind, data = receiver.events()[0]
    assert kind == "prompt.completed" and data["prompt_id"] == first
    assert data["batch"] == {"id": body["batch_id"], "cell": 0, "values": {"1.width": 8}}
    assert data["outputs"]["3"]["images"][0]["filename"] == "x.png"

    # The batch is told once, when its last cell ends.
    assert webhooks.notify_finished_batches(context.database) == 0
    context.dispatcher.dispatch()
    run_cell(context, sender, hooks)
    assert webhooks.notify_finished_batches(context.database) == 1
    assert webhooks.notify_finished_batches(context.database) == 0
    while deliverer.run_once():
        pass
    assert [kind for kind, _ in receiver.events()][-2:] == ["prompt.completed", "batch.completed"]
    completed = receiver.events()[-1][1]
    assert completed["state"] == "done" and completed["counts"] == {"success": 2}
    shown = client.get(f"/api/batches/{body['batch_id']}").get_json()["webhooks"]
    assert sorted((item["event"], item["status"]) for item in shown) == [
        ("batch.completed", "delivered"), ("prompt.completed", "delivered"), ("prompt.completed", "delivered")]


def test_team_and_prompt_webhooks_and_giving_up(client, context, sender, receiver):
    teams.update_team(context.database, "default", {"webhook": receiver.url("/team")}, LOCAL)
    context.teams._ttl = 0
    workers.register(context.database, workers.WorkerInfo(
        name="w1", session="s", queue="q", host="h", pid=1, gpu_index=None, device_name="cpu", device_type="cpu",
        version="t"), context.settings)
    client.post("/prompt", data=json.dumps({"prompt": invert_workflow(),
                                            "extra_data": {"webhook": receiver.url("/mine")}}))
    run_cell(context, sender, webhooks.PromptHooks(context.teams), PromptState.ERROR)
    rows = deliveries(context)
    assert sorted(row.url.rsplit("/", 1)[1] for row in rows) == ["mine", "team"]
    assert {row.event for row in rows} == {"prompt.failed"}
    receiver.statuses = [500] * 100
    deliverer = webhooks.Deliverer(context.database)
    for _ in range(webhooks.MAX_ATTEMPTS):
        time_passes(context)
        deliverer.run_once()
    assert {(row.status, row.attempts) for row in deliveries(context)} == {("failed", webhooks.MAX_ATTEMPTS)}


def test_backoff_doubles_from_five_seconds_up_to_three_hours():
    assert [webhooks.backoff(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert webhooks.backoff(30) == 3 * 3600
