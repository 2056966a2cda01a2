"""The web's file routes with FARM_STORAGE_URL=s3://...: uploads, /view (streamed with Range and
validators, or a presigned redirect), masks, batch zips and contact sheets, and readiness, against a
real S3 API server (moto)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import requests
from PIL import Image

from farm.config import load_settings
from farm.db.models import PromptState
from tests.unit.test_batches import cells_of, post_batch, set_state
from tests.unit.test_files_api import png_bytes, upload
from tests.workflows import invert_workflow


@pytest.fixture
def bucket(s3_server, s3_env):
    return s3_server.new_bucket()


def s3_app(tmp_path, sqlite_template, s3_server, bucket, **settings):
    import shutil

    from farm.services.context import make_context
    from tests.conftest import RecordingSender
    from web import create_app

    database = tmp_path / "farm.db"
    shutil.copy(sqlite_template, database)
    config = load_settings(env={}, data_dir=str(tmp_path / "data"), database_url=f"sqlite:///{database}",
                           storage_url=f"s3://{bucket}/studio", s3_endpoint_url=s3_server.endpoint, **settings)
    context = make_context(config, sender=RecordingSender())
    return create_app(config, context=context).test_client(), context


@pytest.fixture
def s3_client(tmp_path, sqlite_template, s3_server, bucket):
    client, context = s3_app(tmp_path, sqlite_template, s3_server, bucket)
    yield client, context
    context.database.dispose()


def test_an_upload_lands_in_the_bucket_and_views_back(s3_client, s3_server, bucket, tmp_path):
    client, _ = s3_client
    data = png_bytes(size=(6, 4))
    assert upload(client, "cat.png", data, subfolder="pets").get_json() == {
        "name": "cat.png", "subfolder": "pets", "type": "input"}
    assert s3_server.keys(bucket) == ["studio/input/pets/cat.png"]
    assert not (tmp_path / "data" / "input" / "pets").exists()  # nothing on the web's disk
    answer = client.get("/view", query_string={"filename": "cat.png", "subfolder": "pets", "type": "input"})
    assert answer.status_code == 200 and answer.data == data and answer.mimetype == "image/png"
    assert answer.headers["Accept-Ranges"] == "bytes" and answer.headers["Content-Length"] == str(len(data))
    preview = client.get("/view", query_string={"filename": "cat.png", "subfolder": "pets", "type": "input",
                                                "preview": "webp;80"})
    assert preview.mimetype == "image/webp" and Image.open(io.BytesIO(preview.data)).size == (6, 4)


def test_view_answers_ranges_and_validators_from_the_store(s3_client):
    client, context = s3_client
    data = bytes(range(256)) * 40
    context.storage.save_upload("output", "", "clip.mp4", io.BytesIO(data), overwrite=False)
    query = {"filename": "clip.mp4"}
    whole = client.get("/view", query_string=query)
    etag = whole.headers["ETag"]
    part = client.get("/view", query_string=query, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.data == data[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get("/view", query_string=query, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == data[-10:]
    beyond = client.get("/view", query_string=query, headers={"Range": f"bytes={len(data) + 5}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert client.get("/view", query_string=query, headers={"If-None-Match": etag}).status_code == 304
    stale = client.get("/view", query_string=query, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.data == data


def test_view_keeps_comfyuis_answers_for_bad_and_missing_files(s3_client):
    client, _ = s3_client
    assert client.get("/view", query_string={"filename": "none.png"}).status_code == 404
    assert client.get("/view", query_string={"filename": "x.png", "subfolder": "../.."}).status_code == 403
    assert client.get("/view", query_string={"filename": "../x.png"}).status_code == 400
    assert client.get("/view", query_string={"filename": "x.png", "type": "models"}).status_code == 400


def test_active_content_is_downloaded_never_rendered(s3_client):
    client, context = s3_client
    context.storage.save_upload("output", "", "page.html", io.BytesIO(b"<script>alert(1)</script>"), False)
    answer = client.get("/view", query_string={"filename": "page.html"})
    assert answer.mimetype == "application/octet-stream"
    assert answer.headers["Content-Disposition"].startswith("attachment;")


def test_presigned_view_redirects_to_the_store_with_safe_headers(tmp_path, sqlite_template, s3_server, bucket):
    client, context = s3_app(tmp_path, sqlite_template, s3_server, bucket, s3_presign=True)
    data = png_bytes()
    context.storage.save_upload("output", "", "p.png", io.BytesIO(data), False)
    context.storage.save_upload("output", "", "page.svg", io.BytesIO(b"<svg onload='alert(1)'/>"), False)
    answer = client.get("/view", query_string={"filename": "p.png"})
    assert answer.status_code == 302 and answer.location.startswith(s3_server.endpoint)
    fetched = requests.get(answer.location, timeout=10)
    assert fetched.content == data and fetched.headers["Content-Type"] == "image/png"
    svg = requests.get(client.get("/view", query_string={"filename": "page.svg"}).location, timeout=10)
    assert svg.headers["Content-Type"] == "application/octet-stream"
    assert svg.headers["Content-Disposition"].startswith("attachment;")
    # previews are made by the web process, not redirected
    assert client.get("/view", query_string={"filename": "p.png", "preview": "webp"}).mimetype == "image/webp"
    context.database.dispose()


def test_a_mask_is_composed_over_an_original_in_the_bucket(s3_client, s3_server, bucket):
    client, _ = s3_client
    upload(client, "face.png", png_bytes("RGB", size=(4, 4), color=(200, 10, 10)))
    mask = png_bytes("RGBA", size=(4, 4), color=(0, 0, 0, 77))
    answer = upload(client, "face-mask.png", mask, route="/upload/mask",
                    original_ref=json.dumps({"filename": "face.png", "type": "input"}))
    assert answer.status_code == 200, answer.get_json()
    composed = Image.open(io.BytesIO(client.get("/view", query_string={"filename": "face-mask.png",
                                                                       "type": "input"}).data))
    assert composed.getpixel((1, 1)) == (200, 10, 10, 77)
    assert "studio/input/face-mask.png" in s3_server.keys(bucket)


def test_batch_zip_and_contact_sheet_read_the_bucket(s3_client):
    client, context = s3_client
    batch_id = post_batch(client, {"workflow": invert_workflow(), "sweep": {"1.width": [8, 9]}}).get_json()[
        "batch_id"]
    for cell in cells_of(context, batch_id):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (255, 0, 0) if cell.cell_index == 0 else (0, 0, 255)).save(buffer, "PNG")
        buffer.seek(0)
        name = context.storage.save_upload("output", "sweep", f"cell{cell.cell_index}.png", buffer, False)
        set_state(context, [cell.prompt_id], PromptState.SUCCESS.value, outputs={
            "3": {"images": [{"filename": name, "subfolder": "sweep", "type": "output"}]}})
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/batches/{batch_id}/outputs.zip").get_data()))
    assert archive.namelist() == ["cell-00000/sweep/cell0.png", "cell-00001/sweep/cell1.png", "cells.csv"]
    assert Image.open(io.BytesIO(archive.read("cell-00001/sweep/cell1.png"))).getpixel((0, 0)) == (0, 0, 255)
    sheet = Image.open(io.BytesIO(client.get(f"/api/batches/{batch_id}/sheet.png").get_data())).convert("RGB")
    assert (255, 0, 0) in {color for _, color in sheet.getcolors(1 << 16)}
    assert (0, 0, 255) in {color for _, color in sheet.getcolors(1 << 16)}


def test_readiness_names_a_store_that_went_away(s3_client, s3_server, bucket):
    client, _ = s3_client
    assert client.get("/readyz").get_json()["checks"]["storage"] == "ok"
    s3_server.client().delete_bucket(Bucket=bucket)
    client.application.extensions["farm_readiness"]._result = None  # skip the 2 s cache
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "does not exist" in answer.get_json()["checks"]["storage"]


def test_a_store_failing_mid_request_is_a_503_in_the_error_shape(s3_client, s3_server, bucket):
    client, _ = s3_client
    s3_server.client().delete_bucket(Bucket=bucket)
    answer = upload(client, "a.png", png_bytes())
    assert answer.status_code == 503
    assert answer.get_json()["error"]["type"] == "storage_unavailable"
