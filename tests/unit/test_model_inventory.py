"""Model files as the workers see them: what the web validates against and lists."""

from __future__ import annotations

from farm.models import inventory
from farm.services import workers
from tests.unit.test_dispatch_and_history import register


def test_web_lists_what_live_workers_report_merged(client, context, tmp_path):
    info = register(context, "w1")
    workers.report(context.database, info,
                   {"model_files": {"checkpoints": ["sd15.safetensors", "xl/base.safetensors"], "loras": ["a.safetensors"]}})
    other = register(context, "w2")
    workers.report(context.database, other,
                   {"model_files": {"checkpoints": ["sd15.safetensors", "v2.ckpt"], "embeddings": ["neg.pt"]}})
    context.node_env.models.ttl = 0
    assert client.get("/models/checkpoints").get_json() == ["sd15.safetensors", "v2.ckpt", "xl/base.safetensors"]
    assert client.get("/api/models/loras").get_json() == ["a.safetensors"]
    assert client.get("/models/vae").get_json() == []
    assert client.get("/embeddings").get_json() == ["neg"]
    assert context.node_env.model_files("checkpoints")[0] == "sd15.safetensors"


def test_without_live_workers_the_web_lists_its_own_folder(client, context):
    folder = context.settings.models_dir / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "local.safetensors").write_bytes(b"x")
    assert client.get("/models/checkpoints").get_json() == ["local.safetensors"]


def test_worker_inventory_lists_every_non_empty_folder(tmp_path):
    (tmp_path / "checkpoints" / "sub").mkdir(parents=True)
    (tmp_path / "checkpoints" / "sub" / "m.safetensors").write_bytes(b"x")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "notes.txt").write_text("not a model")
    assert inventory(tmp_path) == {"checkpoints": ["sub/m.safetensors"]}
