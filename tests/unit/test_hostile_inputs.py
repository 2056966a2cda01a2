"""Inputs that once gave a 500 (found by tests/integration/test_openapi_fuzz.py, and by reading
around what it found): each is now the client's error, in the error shape, or simply served."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.unit.test_dashboard import csrf, make_batch

HUGE = 10**30  # past what SQLite binds (2**63)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (10, 20, 30, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_csrf_token_with_non_ascii_characters_is_a_stale_form(client):
    answer = client.post("/dashboard/dispatch/pause", data={"csrf": "é"})
    assert answer.status_code == 400
    assert "CSRF" in answer.get_json()["error"]["details"]


def test_numbers_past_what_the_database_holds_are_refused(client):
    answer = client.get(f"/api/audit?before={HUGE}")
    assert answer.status_code == 400 and answer.get_json()["error"]["type"] == "invalid_query"
    assert client.get(f"/api/audit?before=-{HUGE}").status_code == 400
    revoked = client.post(f"/api/keys/{HUGE}/revoke")
    assert revoked.status_code == 404 and revoked.get_json()["error"]["type"] == "not_found"
    batch_id = make_batch(client)
    cells = client.get(f"/api/batches/{batch_id}/cells?after={HUGE}")
    assert cells.status_code == 400 and cells.get_json()["error"]["type"] == "invalid_query"
    retried = client.post(f"/api/batches/{batch_id}/retry", data=json.dumps({"cells": [HUGE]}))
    assert retried.status_code == 400 and retried.get_json()["error"]["type"] == "invalid_batch"
    assert client.get(f"/dashboard/batches/{batch_id}?after={HUGE}").status_code == 400
    assert client.get(f"/dashboard/batches/{batch_id}?after=first").status_code == 400
    assert client.get(f"/dashboard/teams?before={HUGE}").status_code == 200


def test_team_limits_must_be_numbers_the_farm_can_store(client):
    # 1e400 is valid JSON that Python reads as infinity; 2**40 does not fit PostgreSQL's integer.
    for body in ('{"burst": 1e400}', '{"share": 1e400}', '{"max_queued": 1099511627776}', '{"share": NaN}'):
        answer = client.patch("/api/teams/default", data=body)
        assert answer.status_code == 400, body
        assert answer.get_json()["error"]["type"] == "invalid_request"
    created = client.post("/api/teams", data=json.dumps({"name": "big", "max_running": HUGE}))
    assert created.status_code == 400
    assert client.get("/api/teams").get_json()["teams"][0]["burst"] is None
    token = csrf(client.get("/dashboard/teams").get_data(as_text=True))
    for field, value in (("burst", str(HUGE)), ("share", "inf")):
        answer = client.post("/dashboard/teams", data={"csrf": token, "name": "big", field: value})
        assert answer.status_code == 400, field


def test_a_preview_quality_out_of_range_or_in_other_digits_is_ignored(client):
    uploaded = client.post("/upload/image", data={"image": (io.BytesIO(_png()), "dot.png")},
                           content_type="multipart/form-data")
    assert uploaded.status_code == 200
    for preview in ("webp;99999999999", "jpeg;²", "webp;1000"):
        answer = client.get("/view", query_string={"filename": "dot.png", "type": "input", "preview": preview})
        assert answer.status_code == 200, preview
        assert Image.open(io.BytesIO(answer.data)).size == (4, 4)


NESTED_CURSOR = base64.urlsafe_b64encode(b"[" * 1100).decode()


# Found by the fuzzer: an OverflowError from SQLite, a RecursionError decoding the cursor.
@pytest.mark.parametrize("url", [f"/queue?offset={HUGE}", f"/history?offset={HUGE}", f"/api/jobs?offset={HUGE}",
                                 f"/api/jobs?cursor={NESTED_CURSOR}",
                                 f"/api/jobs?cursor={base64.urlsafe_b64encode(b'[' * 290).decode()}"])
def test_offsets_and_cursors_past_what_the_farm_can_read_are_refused(client, url):
    assert client.get(url).status_code == 400
