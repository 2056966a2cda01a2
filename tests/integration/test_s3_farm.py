"""A farm whose web process and worker share nothing but the bucket: separate data folders (as on
two hosts), PostgreSQL and Redis for state, and every file in S3 (a real S3 API server, moto)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url
from tests.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.integration


def files_in(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix in (".png", ".jpg"))


def test_an_uploaded_image_is_loaded_processed_and_viewed_through_the_bucket(tmp_path, s3_server, s3_env):
    bucket = s3_server.new_bucket()
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path / "web-host", database_url, redis_url, redis_url,
                             storage_url=f"s3://{bucket}/farm", s3_endpoint_url=s3_server.endpoint)
        try:
            farm.start_web(wait=False)  # the worker starts alongside
            farm.start_worker("s3-worker", data_dir=tmp_path / "worker-host" / "data")
            buffer = io.BytesIO()
            Image.new("RGB", (8, 6), (0, 255, 0)).save(buffer, format="PNG")
            uploaded = farm.http.post(f"{farm.url}/upload/image", files={"image": ("leaf.png", buffer.getvalue())},
                                      timeout=30)
            assert uploaded.json() == {"name": "leaf.png", "subfolder": "", "type": "input"}
            # the web validates LoadImage's choice against the bucket's listing
            choices = farm.http.get(f"{farm.url}/object_info/LoadImage", timeout=30).json()
            assert "leaf.png" in choices["LoadImage"]["input"]["required"]["image"][0]

            prompt_id = farm.submit({
                "1": {"class_type": "LoadImage", "inputs": {"image": "leaf.png"}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "shared/leaf"}},
            })
            entry = farm.history(prompt_id)
            assert entry["status"]["status_str"] == "success", entry
            image = entry["outputs"]["3"]["images"][0]
            assert image == {"filename": "leaf_00001_.png", "subfolder": "shared", "type": "output"}
            viewed = farm.http.get(f"{farm.url}/view", params=image, timeout=30)
            assert viewed.status_code == 200
            assert Image.open(io.BytesIO(viewed.content)).convert("RGB").getpixel((0, 0)) == (255, 0, 255)
            keys = s3_server.keys(bucket, "farm/")
            assert "farm/output/shared/leaf_00001_.png" in keys and "farm/input/leaf.png" in keys
            assert not [key for key in keys if key.startswith("farm/.attempts/")]  # the journal was dropped
            # neither host kept a copy: the bucket is the only place the files are
            assert files_in(tmp_path / "web-host") == [] and files_in(tmp_path / "worker-host") == []
        finally:
            farm.close()
