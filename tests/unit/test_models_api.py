"""GET /models, /models/<folder>, /embeddings and /extensions over a models folder on disk."""

from __future__ import annotations

import pytest

from farm.config import MODEL_FOLDERS


def touch(path, content=b"weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_folder_types_in_order(client):
    for route in ("/models", "/api/models"):
        response = client.get(route)
        assert response.status_code == 200 and response.get_json() == list(MODEL_FOLDERS)
    assert MODEL_FOLDERS[:3] == ("checkpoints", "configs", "loras")


def test_model_files_nested_sorted_and_filtered(client, settings):
    checkpoints = settings.models_dir / "checkpoints"
    for name in ("b.safetensors", "a.ckpt", "sub/c.pt", "sub/deeper/d.SFT", "sub/e.pt2", "f.bin", "g.pth",
                 "h.pkl", "notes.txt", "preview.png", "sub/model.yaml", ".git/objects/x.safetensors"):
        touch(checkpoints / name)
    (checkpoints / "folder.safetensors").mkdir()  # a folder is not a model file
    expected = ["a.ckpt", "b.safetensors", "f.bin", "g.pth", "h.pkl", "sub/c.pt", "sub/deeper/d.SFT", "sub/e.pt2"]
    assert client.get("/models/checkpoints").get_json() == expected
    assert client.get("/api/models/checkpoints").get_json() == expected


def test_configs_lists_yaml_files(client, settings):
    touch(settings.models_dir / "configs" / "v1-inference.yaml")
    touch(settings.models_dir / "configs" / "stray.safetensors")
    assert client.get("/models/configs").get_json() == ["v1-inference.yaml"]


def test_known_folder_without_files_is_empty(client, settings):
    assert client.get("/models/loras").get_json() == []
    (settings.models_dir / "vae").mkdir(parents=True)
    assert client.get("/models/vae").get_json() == []


@pytest.mark.parametrize("folder", ["unet", "clip", "nothing", "custom_nodes", "%2e%2e"])
def test_unknown_folder_is_404(client, folder):
    response = client.get(f"/models/{folder}")
    assert response.status_code == 404
    assert response.get_json() == {"error": {"type": "not_found", "message": "Unknown model folder",
                                             "details": folder.replace("%2e", "."), "extra_info": {}},
                                   "node_errors": {}}


def test_symlinks_leaving_the_folder_are_not_listed(client, settings, tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "secret.safetensors")
    loras = settings.models_dir / "loras"
    touch(loras / "real.safetensors")
    touch(settings.models_dir / "checkpoints" / "other.safetensors")
    (loras / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (loras / "door").symlink_to(outside)
    (loras / "sibling.safetensors").symlink_to(settings.models_dir / "checkpoints" / "other.safetensors")
    (loras / "alias.safetensors").symlink_to(loras / "real.safetensors")
    (loras / "broken.safetensors").symlink_to(loras / "missing.safetensors")
    touch(loras / "styles" / "s.safetensors")
    (loras / "linked_styles").symlink_to(loras / "styles")
    (loras / "styles" / "loop").symlink_to(loras)
    assert client.get("/models/loras").get_json() == [
        "alias.safetensors", "linked_styles/s.safetensors", "real.safetensors", "styles/s.safetensors",
    ]


def test_a_folder_type_may_itself_be_a_symlink(client, settings, tmp_path):
    big_disk = tmp_path / "big" / "checkpoints"
    touch(big_disk / "sdxl.safetensors")
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "checkpoints").symlink_to(big_disk)
    assert client.get("/models/checkpoints").get_json() == ["sdxl.safetensors"]


def test_embeddings_are_named_without_extension(client, settings):
    embeddings = settings.models_dir / "embeddings"
    for name in ("EasyNegative.safetensors", "sub/foo.pt", "readme.txt", "b.bin"):
        touch(embeddings / name)
    assert client.get("/embeddings").get_json() == ["EasyNegative", "b", "sub/foo"]
    assert client.get("/api/embeddings").get_json() == ["EasyNegative", "b", "sub/foo"]


def test_no_embeddings_folder(client):
    assert client.get("/embeddings").get_json() == []


def test_extensions_are_the_editors_own_scripts(client, monkeypatch):
    from web import frontend

    monkeypatch.setattr(frontend, "frontend_root", lambda: None)
    for route in ("/extensions", "/api/extensions"):
        response = client.get(route)
        assert response.status_code == 200 and response.get_json() == []
