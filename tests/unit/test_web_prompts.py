"""POST /prompt, GET /prompt, GET /queue through the Flask app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from farm.db.models import Prompt
from tests.workflows import invert_workflow


def post(client, body, prefix="", **kwargs):
    return client.post(f"{prefix}/prompt", data=json.dumps(body), **kwargs)


def stored_count(context) -> int:
    with context.database.reading() as session:
        return session.scalar(select(func.count()).select_from(Prompt))


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_accepted_prompt_is_committed_and_answered(client, context, prefix):
    response = post(client, {"prompt": invert_workflow(), "client_id": "abc"}, prefix)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"prompt_id", "number", "node_errors"}
    assert body["number"] == 0 and body["node_errors"] == {}
    assert str(uuid.UUID(body["prompt_id"])) == body["prompt_id"]
    with context.database.reading() as session:
        row = session.get(Prompt, body["prompt_id"])
    assert row.state == "queued" and row.client_id == "abc"
    assert row.extra_data == {"client_id": "abc"} and row.outputs_to_execute == ["3"]


def test_body_is_json_whatever_the_content_type(client):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        assert post(client, {"prompt": invert_workflow()}, headers=headers).status_code == 200


def test_numbers_follow_comfyui_counter_front_and_explicit(client):
    numbers = [post(client, body).get_json()["number"] for body in (
        {"prompt": invert_workflow()},
        {"prompt": invert_workflow()},
        {"prompt": invert_workflow(), "front": True},
        {"prompt": invert_workflow(), "number": 1.5},
        {"prompt": invert_workflow(), "number": 7, "front": True},
        {"prompt": invert_workflow()},
    )]
    assert numbers == [0, 1, -2, 1.5, 7, 3]


def test_queue_lists_pending_in_run_order_as_five_tuples(client):
    ids = {}
    for label, extra in (("a", {}), ("b", {}), ("front", {"front": True}), ("explicit", {"number": 1.5})):
        ids[label] = post(client, {"prompt": invert_workflow(), "client_id": label, **extra}).get_json()["prompt_id"]
    queue = client.get("/queue").get_json()
    assert queue["queue_running"] == []
    pending = queue["queue_pending"]
    assert [item[1] for item in pending] == [ids["front"], ids["a"], ids["b"], ids["explicit"]]
    assert [item[0] for item in pending] == [-2, 0, 1, 1.5]
    first = pending[0]
    assert len(first) == 5
    assert first[2] == invert_workflow() and first[4] == ["3"]
    # The farm says why a prompt waits when it is not its turn (here: no worker at all).
    assert first[3] == {"client_id": "front", "farm_waiting_for": "no worker is live"}
    assert client.get("/prompt").get_json() == {"exec_info": {"queue_remaining": 4}}


def test_same_prompt_id_and_body_is_idempotent(client, context):
    prompt_id = str(uuid.uuid4())
    body = {"prompt": invert_workflow(), "prompt_id": prompt_id, "client_id": "c"}
    first = post(client, body)
    again = post(client, body)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert stored_count(context) == 1


def test_same_prompt_id_with_another_body_is_refused(client, context):
    prompt_id = str(uuid.uuid4())
    assert post(client, {"prompt": invert_workflow(), "prompt_id": prompt_id}).status_code == 200
    response = post(client, {"prompt": invert_workflow(color=1), "prompt_id": prompt_id})
    assert response.status_code == 400
    body = response.get_json()
    assert body["node_errors"] == {}
    assert body["error"]["type"] == "prompt_id_conflict"
    assert body["error"]["extra_info"] == {"prompt_id": prompt_id}
    assert prompt_id in body["error"]["details"]
    assert stored_count(context) == 1


def test_prompt_id_must_be_a_canonical_uuid(client, context):
    response = post(client, {"prompt": invert_workflow(), "prompt_id": "not-a-uuid"})
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "invalid_prompt_id"
    assert response.get_json()["error"]["message"] == "prompt_id must be a valid UUID"
    assert stored_count(context) == 0


def test_credentials_are_never_stored(client, context):
    body = {"prompt": invert_workflow(), "extra_data": {"api_key_comfy_org": "secret", "auth_token_comfy_org": "t",
                                                        "extra_pnginfo": {"workflow": {"id": "w"}}}}
    prompt_id = post(client, body).get_json()["prompt_id"]
    with context.database.reading() as session:
        assert session.get(Prompt, prompt_id).extra_data == {"extra_pnginfo": {"workflow": {"id": "w"}}}


def test_partial_execution_targets_restrict_outputs(client, context):
    prompt = invert_workflow()
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    body = post(client, {"prompt": prompt, "partial_execution_targets": ["4"]}).get_json()
    with context.database.reading() as session:
        row = session.get(Prompt, body["prompt_id"])
    assert row.outputs_to_execute == ["4"] and row.partial_execution_targets == ["4"]


BAD_PROMPTS = {
    "no_prompt": ({"client_id": "x"}, {"type": "no_prompt", "message": "No prompt provided",
                                       "details": "No prompt provided", "extra_info": {}}),
    "not_an_object": ({"prompt": [1, 2]}, {"type": "invalid_prompt", "message": "Invalid prompt",
                                           "details": "the prompt must be an object of nodes keyed by node id",
                                           "extra_info": {}}),
    "unknown_class": ({"prompt": {"1": {"class_type": "Nope", "inputs": {}, "_meta": {"title": "My node"}}}},
                      {"type": "missing_node_type", "message": "Cannot execute because node Nope does not exist.",
                       "details": "Node ID '#1'",
                       "extra_info": {"node_id": "1", "class_type": "Nope", "node_title": "My node"}}),
    "no_outputs": ({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}},
                   {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                    "extra_info": {}}),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_structural_errors_have_comfyui_shape_and_store_nothing(client, context, case):
    body, error = BAD_PROMPTS[case]
    response = post(client, body)
    assert response.status_code == 400
    assert response.get_json() == {"error": error, "node_errors": {}}
    assert stored_count(context) == 0


def test_missing_required_input_and_bad_link_report_node_errors(client, context):
    prompt = invert_workflow()
    del prompt["3"]["inputs"]["images"]
    body = post(client, {"prompt": prompt}).get_json()
    assert body == {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "Required input is missing: images", "extra_info": {}},
        "node_errors": {"3": {"errors": [{"type": "required_input_missing", "message": "Required input is missing",
                                          "details": "images", "extra_info": {"input_name": "images"}}],
                              "dependent_outputs": ["3"], "class_type": "SaveImage"}},
    }
    prompt = invert_workflow()
    prompt["2"]["inputs"]["image"] = ["9", 0]
    body = post(client, {"prompt": prompt}).get_json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["9"]["errors"][0]["type"] == "exception_during_inner_validation"
    assert body["node_errors"]["9"]["dependent_outputs"] == ["3"]
    prompt = invert_workflow()
    prompt["2"]["inputs"]["image"] = ["1", 3]
    body = post(client, {"prompt": prompt}).get_json()
    assert body["node_errors"]["1"]["errors"][0]["extra_info"]["linked_node"] == ["1", 3]
    assert stored_count(context) == 0


def test_malformed_json_is_a_400_in_the_error_shape(client, context):
    response = client.post("/prompt", data="{not json")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"]["type"] == "invalid_json" and body["node_errors"] == {}
    assert stored_count(context) == 0


def test_unknown_route_and_wrong_method(client):
    missing = client.get("/no/such/route")
    assert missing.status_code == 404 and missing.get_json()["error"]["type"] == "not_found"
    wrong = client.delete("/prompt")
    assert wrong.status_code == 405 and wrong.get_json()["error"]["type"] == "method_not_allowed"


def test_body_over_the_limit_is_413(tmp_path, database_url):
    from farm.config import load_settings
    from farm.services.context import make_context
    from web import create_app

    settings = load_settings(env={}, data_dir=str(tmp_path / "d"), database_url=database_url, max_upload_bytes=1000)
    app = create_app(settings, context=make_context(settings))
    response = app.test_client().post("/prompt", data=json.dumps({"prompt": invert_workflow(), "pad": "x" * 2000}))
    assert response.status_code == 413
    assert response.get_json()["error"]["type"] == "request_too_large"
