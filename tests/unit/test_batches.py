"""Studio batches through the API: accepted whole or refused naming the cell, listed, paged, paused,
resumed, cancelled, retried and reprioritised, per team, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select, update

from farm.db.models import AuditEntry, Batch, Prompt, PromptState
from farm.services import teams
from farm.services.principal import LOCAL
from tests.workflows import invert_workflow


def post_batch(client, body, headers=None):
    return client.post("/api/batches", data=json.dumps(body), headers=headers or {})


def stored(context) -> tuple[int, int]:
    with context.database.reading() as session:
        return session.scalar(select(func.count()).select_from(Batch)), \
            session.scalar(select(func.count()).select_from(Prompt))


def cells_of(context, batch_id: str) -> list[Prompt]:
    with context.database.reading() as session:
        return session.execute(select(Prompt).where(Prompt.batch_id == batch_id).order_by(Prompt.cell_index)
                               ).scalars().all()


def set_state(context, prompt_ids, state: str, **values) -> None:
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id.in_(prompt_ids)).values(state=state, **values))


def test_a_sweep_becomes_cells_with_their_values_in_queue_order(client, context):
    answer = post_batch(client, {"workflow": invert_workflow(), "name": "colours",
                                 "sweep": {"1.color": [0, 255], "1.width": {"range": [8, 10]}}})
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["cells"] == 6 and len(body["prompt_ids"]) == 6
    cells = cells_of(context, body["batch_id"])
    assert [cell.cell_values for cell in cells] == [
        {"1.color": 0, "1.width": 8}, {"1.color": 0, "1.width": 9}, {"1.color": 0, "1.width": 10},
        {"1.color": 255, "1.width": 8}, {"1.color": 255, "1.width": 9}, {"1.color": 255, "1.width": 10}]
    assert [cell.prompt["1"]["inputs"]["width"] for cell in cells] == [8, 9, 10, 8, 9, 10]
    assert [cell.number for cell in cells] == sorted(cell.number for cell in cells)
    assert cells[4].extra_data["farm_batch"] == {"id": body["batch_id"], "cell": 4,
                                                 "values": {"1.color": 255, "1.width": 9}}
    # Plain ComfyUI clients see the cells as prompts.
    pending = client.get("/queue").get_json()["queue_pending"]
    assert [item[1] for item in pending] == [cell.prompt_id for cell in cells]
    assert client.get("/prompt").get_json()["exec_info"]["queue_remaining"] == 6


def test_a_list_of_workflows_is_one_cell_each(client, context):
    body = post_batch(client, {"workflows": [invert_workflow(1), invert_workflow(2)]}).get_json()
    assert [cell.cell_values for cell in cells_of(context, body["batch_id"])] == [{"workflow": 0}, {"workflow": 1}]


def test_rows_come_from_an_uploaded_csv(client, context):
    batch = {"workflow": invert_workflow(), "name": "from csv"}
    answer = client.post("/api/batches", content_type="multipart/form-data", data={
        "batch": json.dumps(batch), "rows": (io.BytesIO(b"1.color,3.filename_prefix\n10,red\n20,blue\n"), "rows.csv")})
    assert answer.status_code == 201, answer.get_json()
    cells = cells_of(context, answer.get_json()["batch_id"])
    assert [cell.cell_values for cell in cells] == [{"1.color": 10, "3.filename_prefix": "red"},
                                                    {"1.color": 20, "3.filename_prefix": "blue"}]


def test_one_invalid_cell_refuses_the_whole_batch_naming_it(client, context):
    answer = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": [8, 16, -4, 32]}})
    assert answer.status_code == 400
    body = answer.get_json()
    assert body["error"]["type"] == "invalid_batch_cell"
    assert body["error"]["extra_info"]["cell"] == 2 and body["error"]["extra_info"]["values"] == {"1.width": -4}
    assert "Cell 2" in body["error"]["message"]
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"
    # A value of the wrong type.
    answer = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": [8, "wide"]}})
    assert answer.status_code == 400 and answer.get_json()["error"]["extra_info"]["cell"] == 1
    assert answer.get_json()["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"
    # Ranges are checked at their ends.
    answer = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": {"range": [0, 64]}}})
    assert answer.status_code == 400 and answer.get_json()["error"]["extra_info"]["cell"] == 0
    assert stored(context) == (0, 0)


@pytest.mark.parametrize(("body", "message"), [
    ({"workflow": invert_workflow(), "sweep": {"9.seed": [1]}}, "the workflow has no node '9'"),
    ({"workflow": invert_workflow(), "sweep": {"1.seed": [1]}}, "has no input 'seed'"),
    ({"workflow": invert_workflow(), "sweep": {"2.image": [1]}}, "linked to another node"),
    ({"workflow": invert_workflow(), "sweep": {"1.width": []}}, "empty list"),
    ({"workflow": invert_workflow(), "sweep": {"1.width": {"range": [8, 9]}, "1.color": [1]}, "mode": "zip"},
     "same number of values"),
    ({"workflow": invert_workflow(), "priority": 101}, "priority must be"),
    ({"workflow": invert_workflow(), "webhook": "ftp://x"}, "webhook must be"),
    ({"workflows": [], "name": "x"}, "non-empty list"),
    ({"sweep": {}}, "give one API-format workflow"),
])
def test_malformed_batches_are_refused_in_the_error_shape(client, context, body, message):
    answer = post_batch(client, body)
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]["message"]
    assert stored(context) == (0, 0)


def test_the_cell_limit_applies(client, context, settings):
    context.settings = settings.with_overrides(max_batch_cells=5)
    answer = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": {"range": [8, 13]}}})
    assert answer.status_code == 400 and "FARM_MAX_BATCH_CELLS" in answer.get_json()["error"]["message"]


def test_a_dry_run_validates_and_counts_but_stores_nothing(client, context):
    answer = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": {"range": [8, 107]}},
                                 "dry_run": True})
    assert answer.status_code == 200
    assert answer.get_json()["cells"] == 100 and answer.get_json()["dry_run"] is True
    assert "estimate" in answer.get_json()
    assert stored(context) == (0, 0)


def test_listing_filters_and_pages_newest_first(client, context):
    ids = [post_batch(client, {"workflow": invert_workflow(), "name": f"shot {index}"}).get_json()["batch_id"]
           for index in range(5)]
    first = client.get("/api/batches?limit=2").get_json()
    assert [b["id"] for b in first["batches"]] == ids[::-1][:2] and first["next"] == ids[3]
    second = client.get(f"/api/batches?limit=2&before={first['next']}").get_json()
    assert [b["id"] for b in second["batches"]] == [ids[2], ids[1]]
    assert [b["name"] for b in client.get("/api/batches?name=shot 3").get_json()["batches"]] == ["shot 3"]
    client.post(f"/api/batches/{ids[0]}/pause")
    assert [b["id"] for b in client.get("/api/batches?state=paused").get_json()["batches"]] == [ids[0]]
    assert len(client.get("/api/batches?state=queued").get_json()["batches"]) == 4
    assert client.get("/api/batches?state=sideways").status_code == 400


def test_pause_resume_cancel_retry_and_priority(client, context):
    batch_id = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": {"range": [8, 11]}}}
                          ).get_json()["batch_id"]
    cells = [cell.prompt_id for cell in cells_of(context, batch_id)]
    set_state(context, cells[:1], PromptState.RUNNING.value, worker="w1")
    paused = client.post(f"/api/batches/{batch_id}/pause").get_json()
    assert paused["state"] == "paused"
    assert paused["counts"] == {"running": 1, "paused": 3}
    assert [item[1] for item in client.get("/queue").get_json()["queue_pending"]] == []  # nothing dispatchable
    resumed = client.post(f"/api/batches/{batch_id}/resume").get_json()
    assert resumed["state"] == "running" and resumed["counts"] == {"running": 1, "queued": 3}
    assert client.post(f"/api/batches/{batch_id}/priority", data=json.dumps({"priority": 40})).get_json()[
        "priority"] == 40
    assert {cell.priority for cell in cells_of(context, batch_id)} == {40}
    set_state(context, cells[1:2], PromptState.ERROR.value)
    cancelled = client.post(f"/api/batches/{batch_id}/cancel").get_json()
    assert cancelled["state"] == "cancelled" and cancelled["counts"] == {"running": 1, "error": 1, "cancelled": 2}
    one = client.post(f"/api/batches/{batch_id}/retry", data=json.dumps({"cells": [1]})).get_json()
    assert one["counts"] == {"running": 1, "queued": 1, "cancelled": 2}  # that cell only
    assert client.post(f"/api/batches/{batch_id}/pause", data=json.dumps({"cells": [1]})).status_code == 200
    client.post(f"/api/batches/{batch_id}/resume")
    retried = client.post(f"/api/batches/{batch_id}/retry").get_json()
    assert retried["counts"] == {"running": 1, "queued": 3} and retried["state"] == "running"
    assert client.post(f"/api/batches/{batch_id}/explode").status_code == 404
    with context.database.reading() as session:
        actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    assert actions == ["batch.pause", "batch.resume", "batch.priority", "batch.cancel", "batch.retry",
                       "batch.pause", "batch.resume", "batch.retry"]


def test_bulk_actions_apply_to_every_listed_batch(client, context):
    ids = [post_batch(client, {"workflow": invert_workflow()}).get_json()["batch_id"] for _ in range(3)]
    answer = client.post("/api/batches/actions", data=json.dumps({"action": "pause", "ids": ids[:2]}))
    assert [b["state"] for b in answer.get_json()["batches"]] == ["paused", "paused"]
    assert client.get(f"/api/batches/{ids[2]}").get_json()["state"] == "queued"
    assert client.post("/api/batches/actions", data=json.dumps({"action": "pause"})).status_code == 400


def test_detail_counts_cells_and_lists_outputs(client, context):
    batch_id = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": [8, 9]}}).get_json()["batch_id"]
    first, second = cells_of(context, batch_id)
    outputs = {"3": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id == first.prompt_id).values(
            state=PromptState.SUCCESS.value, outputs=outputs, worker="w1", started_at=Prompt.created_at,
            finished_at=Prompt.created_at))
    detail = client.get(f"/api/batches/{batch_id}").get_json()
    assert detail["counts"] == {"success": 1, "queued": 1} and detail["progress"] == 0.5
    assert detail["outputs"] == [{"cell": 0, "prompt_id": first.prompt_id, "node": "3", "values": {"1.width": 8},
                                  "filename": "a.png", "subfolder": "", "type": "output"}]
    page = client.get(f"/api/batches/{batch_id}/cells?limit=1").get_json()
    assert page["cells"][0]["state"] == "success" and page["next"] == 0
    assert client.get(f"/api/batches/{batch_id}/cells?after=0").get_json()["cells"][0]["prompt_id"] == \
        second.prompt_id
    assert client.get("/api/batches/nope").status_code == 404


def test_batches_belong_to_their_team(settings, sender):
    from farm.services.context import make_context
    from web import create_app

    context = make_context(settings.with_overrides(auth="on"), sender=sender)
    try:
        for name in ("a", "b"):
            teams.create_team(context.database, name, teams.TeamLimits(max_priority=60), LOCAL)
        key_a = teams.create_key(context.database, "a", "submit", "", LOCAL)[0]
        key_b = teams.create_key(context.database, "b", "submit", "", LOCAL)[0]
        lead_a = teams.create_key(context.database, "a", "operator", "", LOCAL)[0]
        client = create_app(context.settings, context=context).test_client()
        a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
        batch_id = post_batch(client, {"workflow": invert_workflow()}, a).get_json()["batch_id"]
        assert client.get("/api/batches", headers=b).get_json()["batches"] == []
        assert client.get(f"/api/batches/{batch_id}", headers=b).status_code == 404
        assert client.get(f"/api/batches/{batch_id}/outputs.zip", headers=b).status_code == 404
        assert client.get(f"/api/batches/{batch_id}/sheet.png", headers=b).status_code == 404
        assert client.get(f"/api/batches/{batch_id}/cells", headers=b).status_code == 404
        assert client.post(f"/api/batches/{batch_id}/cancel", headers=b).status_code == 404
        assert client.post("/api/batches/actions", data=json.dumps({"action": "cancel", "ids": [batch_id]}),
                           headers=b).status_code == 404
        assert client.get(f"/api/batches/{batch_id}", headers=a).get_json()["state"] == "queued"
        # Priorities above the team's limit need an operator.
        assert post_batch(client, {"workflow": invert_workflow(), "priority": 90}, a).status_code == 403
        assert post_batch(client, {"workflow": invert_workflow(), "priority": 90},
                          {"Authorization": f"Bearer {lead_a}"}).status_code == 201
        assert client.post(f"/api/batches/{batch_id}/priority", data=json.dumps({"priority": 61}),
                           headers=a).status_code == 403
        with context.database.reading() as session:
            assert set(session.scalars(select(Prompt.team))) == {"a"}
    finally:
        context.database.dispose()


# dispatch ---------------------------------------------------------------------------------------
def _workers(context, *names, tags=()):
    from farm.services import workers

    infos = []
    for name in names:
        info = workers.WorkerInfo(name=name, session=f"s-{name}", queue=f"farm.gpu.{name}", host="h", pid=1,
                                  gpu_index=None, device_name="cpu", device_type="cpu", version="test",
                                  tags=list(tags))
        workers.register(context.database, info, context.settings)
        infos.append(info)
    return infos


def _dispatched(sender) -> list[tuple[str, str]]:
    sent, sender.sent = [(a.prompt_id, a.worker) for a in sender.sent], []
    return sent


def _finish(context, prompt_id: str) -> None:
    set_state(context, [prompt_id], PromptState.SUCCESS.value, outputs={}, messages=[])


def test_front_then_batch_priority_then_comfyui_order(client, context, sender):
    plain = client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})).get_json()["prompt_id"]
    low = post_batch(client, {"workflow": invert_workflow(), "priority": 10}).get_json()["prompt_ids"][0]
    high = post_batch(client, {"workflow": invert_workflow(), "priority": 90}).get_json()["prompt_ids"][0]
    front = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), "front": True})).get_json()[
        "prompt_id"]
    assert [item[1] for item in client.get("/queue").get_json()["queue_pending"]] == [front, high, plain, low]
    _workers(context, "w1")
    order = []
    for _ in range(4):
        context.dispatcher.dispatch()
        (taken, _worker), = _dispatched(sender)
        order.append(taken)
        _finish(context, taken)
    assert order == [front, high, plain, low]


def test_cells_that_need_tags_go_only_to_workers_with_them_and_say_so_while_waiting(client, context, sender):
    batch = post_batch(client, {"workflow": invert_workflow(), "tags": ["a100"], "sweep": {"1.width": [8, 9]}})
    first, second = batch.get_json()["prompt_ids"]
    plain = client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})).get_json()["prompt_id"]
    _workers(context, "small")
    context.dispatcher.dispatch()
    assert _dispatched(sender) == [(plain, "small")]
    job = client.get(f"/api/jobs/{first}").get_json()
    assert job["waiting_for"] == "no live worker has the tag 'a100'"
    _workers(context, "big", tags=["a100", "nvme"])
    context.dispatcher.dispatch()
    assert _dispatched(sender) == [(first, "big")]


def test_max_workers_caps_how_many_cells_run_at_once(client, context, sender):
    capped = post_batch(client, {"workflow": invert_workflow(), "max_workers": 2,
                                 "sweep": {"1.width": {"range": [8, 11]}}}).get_json()["prompt_ids"]
    other = client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})).get_json()["prompt_id"]
    _workers(context, "w1", "w2", "w3", "w4")
    context.dispatcher.dispatch()
    taken = dict(_dispatched(sender))
    assert set(taken) == {capped[0], capped[1], other}  # the fourth worker waits: the cap, not the order
    _finish(context, capped[0])
    context.dispatcher.dispatch()
    assert [prompt_id for prompt_id, _ in _dispatched(sender)] == [capped[2]]


def test_paused_cells_are_pending_jobs_that_say_why_and_can_be_cancelled_one_by_one(client, context):
    body = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": [8, 9]}}).get_json()
    client.post(f"/api/batches/{body['batch_id']}/pause")
    first, second = body["prompt_ids"]
    job = client.get(f"/api/jobs/{first}").get_json()
    assert job["status"] == "pending" and job["waiting_for"] == "its batch is paused"
    assert client.post(f"/api/jobs/{first}/cancel").get_json() == {"cancelled": True}
    assert client.get(f"/api/batches/{body['batch_id']}").get_json()["counts"] == {"cancelled": 1, "paused": 1}


# downloads --------------------------------------------------------------------------------------
def _done_with_images(context, batch_id: str, colors: dict[int, tuple]) -> None:
    """Cells of `batch_id` whose index is in `colors` succeed with one image of that color."""
    from PIL import Image

    output = context.storage.for_team("default").root("output")
    for cell in cells_of(context, batch_id):
        if cell.cell_index not in colors:
            continue
        name = f"cell{cell.cell_index}.png"
        Image.new("RGB", (64, 64), colors[cell.cell_index]).save(output / name)
        set_state(context, [cell.prompt_id], PromptState.SUCCESS.value, outputs={
            "3": {"images": [{"filename": name, "subfolder": "", "type": "output"}]}})


def test_outputs_zip_streams_every_file_with_a_manifest(client, context):
    import csv
    import zipfile

    batch_id = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": [8, 9, 10]}}).get_json()[
        "batch_id"]
    _done_with_images(context, batch_id, {0: (255, 0, 0), 2: (0, 0, 255)})
    answer = client.get(f"/api/batches/{batch_id}/outputs.zip")
    assert answer.status_code == 200 and answer.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(answer.get_data()))
    assert archive.namelist() == ["cell-00000/cell0.png", "cell-00002/cell2.png", "cells.csv"]
    assert archive.read("cell-00000/cell0.png")[:4] == b"\x89PNG"
    manifest = list(csv.DictReader(io.StringIO(archive.read("cells.csv").decode())))
    assert [(row["cell"], row["state"], json.loads(row["values"])) for row in manifest] == [
        ("0", "success", {"1.width": 8}), ("1", "queued", {"1.width": 9}), ("2", "success", {"1.width": 10})]


def test_the_contact_sheet_lays_a_two_axis_sweep_out_as_a_labelled_grid(client, context):
    from PIL import Image

    from farm.services.batch_files import HEADER, LABEL_HEIGHT, TILE

    batch_id = post_batch(client, {"workflow": invert_workflow(),
                                   "sweep": {"1.color": [1, 2], "1.width": {"range": [8, 10]}}}).get_json()["batch_id"]
    _done_with_images(context, batch_id, {0: (255, 0, 0), 4: (0, 255, 0)})
    answer = client.get(f"/api/batches/{batch_id}/sheet.png")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    sheet = Image.open(io.BytesIO(answer.get_data())).convert("RGB")
    left = 180
    assert sheet.size == (left + 3 * TILE, HEADER + 2 * (TILE + LABEL_HEIGHT))  # widths across, colors down

    def centre(column, row):
        return sheet.getpixel((left + column * TILE + TILE // 2, HEADER + row * (TILE + LABEL_HEIGHT) + TILE // 2))

    assert centre(0, 0) == (255, 0, 0)  # cell 0: color 1, width 8
    assert centre(1, 1) == (0, 255, 0)  # cell 4: color 2, width 9
    assert centre(2, 0) != (255, 255, 255) and centre(2, 0)[0] < 240  # not run yet: a grey tile
    # Any other batch: a square-ish grid of captioned tiles.
    listed = post_batch(client, {"workflows": [invert_workflow(), invert_workflow(), invert_workflow()]}).get_json()
    other = Image.open(io.BytesIO(client.get(f"/api/batches/{listed['batch_id']}/sheet.png").get_data()))
    assert other.size == (2 * TILE, 2 * (TILE + LABEL_HEIGHT))
