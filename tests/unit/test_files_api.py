"""GET /view previews and channels, POST /upload/image and /upload/mask, through the web app."""

from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image, PngImagePlugin

PIXEL = (10, 20, 30, 128)


def png_bytes(mode="RGBA", size=(4, 2), color=PIXEL, text=None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def decoded(response) -> Image.Image:
    return Image.open(io.BytesIO(response.data))


def pixels(image: Image.Image) -> list[tuple]:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def close(actual, expected, tolerance=3) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def upload(client, name, data, route="/upload/image", **fields):
    body = {"image": (io.BytesIO(data), name), **fields}
    return client.post(route, data=body, content_type="multipart/form-data")


def files_under(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def rgba(context):
    (context.storage.root("output") / "p.png").write_bytes(png_bytes())
    (context.storage.root("output") / "rgb.png").write_bytes(png_bytes("RGB", color=PIXEL[:3]))


# -- GET /view ---------------------------------------------------------------------------------

@pytest.mark.parametrize("query,fmt,mode,pixel", [
    ({"preview": "webp;90"}, "webp", "RGBA", PIXEL),
    ({"preview": "webp"}, "webp", "RGBA", PIXEL),
    ({"preview": "gif;50"}, "webp", "RGBA", PIXEL),  # unknown formats fall back to webp
    ({"preview": "jpeg;95"}, "jpeg", "RGB", PIXEL[:3]),
    ({"preview": "jpeg", "channel": "rgba"}, "webp", "RGBA", PIXEL),  # an alpha channel forces webp
    ({"preview": "webp", "channel": "rgb"}, "webp", "RGB", PIXEL[:3]),
])
def test_view_preview(client, rgba, query, fmt, mode, pixel):
    response = client.get("/api/view", query_string={"filename": "p.png", **query})
    assert response.status_code == 200
    assert response.mimetype == f"image/{fmt}"
    assert response.headers["Content-Disposition"] == 'filename="p.png"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    image = decoded(response)
    assert (image.format, image.mode, image.size) == (fmt.upper(), mode, (4, 2))
    assert close(image.getpixel((3, 1)), pixel)


def test_view_preview_quality_is_the_last_numeric_part(client, context):
    noise = random.Random(7)
    image = Image.new("RGB", (64, 64))
    image.putdata([tuple(noise.randrange(256) for _ in range(3)) for _ in range(64 * 64)])
    image.save(context.storage.root("output") / "noise.png")

    def size(preview):
        return len(client.get("/view", query_string={"filename": "noise.png", "preview": preview}).data)

    assert size("jpeg;5") < size("jpeg;50") < size("jpeg;95")
    assert size("jpeg;x;95") == size("jpeg;95")
    assert size("jpeg;high") == size("jpeg;90") == size("jpeg")


@pytest.mark.parametrize("filename,channel,mode,pixel", [
    ("p.png", "rgb", "RGB", PIXEL[:3]),
    ("p.png", "a", "RGBA", (0, 0, 0, 128)),
    ("rgb.png", "a", "RGBA", (0, 0, 0, 255)),  # no alpha: fully opaque
])
def test_view_channel(client, rgba, filename, channel, mode, pixel):
    response = client.get("/view", query_string={"filename": filename, "channel": channel})
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["Content-Disposition"] == f'filename="{filename}"'
    image = decoded(response)
    assert (image.format, image.mode, image.size) == ("PNG", mode, (4, 2))
    assert set(pixels(image)) == {pixel}


def test_view_alpha_of_a_palette_image_with_transparency(client, context):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.putdata([0, 1])
    image.save(context.storage.root("output") / "pal.png", transparency=0)
    response = client.get("/view", query_string={"filename": "pal.png", "channel": "a"})
    assert pixels(decoded(response)) == [(0, 0, 0, 0), (0, 0, 0, 255)]


def test_view_other_channels_serve_the_file_as_it_is(client, rgba, context):
    stored = (context.storage.root("output") / "p.png").read_bytes()
    for query in ({}, {"channel": "rgba"}, {"channel": "x"}):
        response = client.get("/view", query_string={"filename": "p.png", **query})
        assert response.status_code == 200 and response.mimetype == "image/png" and response.data == stored


@pytest.mark.parametrize("query", [{"preview": "webp"}, {"channel": "rgb"}, {"channel": "a"}])
def test_view_conversion_of_a_non_image_is_400(client, context, query):
    (context.storage.root("output") / "fake.png").write_bytes(b"not a picture")
    response = client.get("/view", query_string={"filename": "fake.png", **query})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["type"], error["message"]) == ("invalid_image", "The file is not an image that can be converted")


# -- POST /upload/image ------------------------------------------------------------------------

def test_upload_then_view(client, context):
    data = png_bytes()
    response = upload(client, "a.png", data)
    assert response.status_code == 200
    assert response.get_json() == {"name": "a.png", "subfolder": "", "type": "input"}
    assert files_under(context.storage.root("input")) == ["a.png"]
    viewed = client.get("/view", query_string={"filename": "a.png", "type": "input"})
    assert viewed.status_code == 200 and viewed.data == data


def test_upload_naming_reuses_same_content_and_numbers_other_content(client, context):
    first, second, third = png_bytes(color=(1, 1, 1, 1)), png_bytes(color=(2, 2, 2, 2)), png_bytes(color=(3, 3, 3, 3))
    names = [upload(client, "a.png", data).get_json()["name"] for data in (first, first, second, third, second)]
    assert names == ["a.png", "a.png", "a (1).png", "a (2).png", "a (1).png"]
    input_dir = context.storage.root("input")
    assert files_under(input_dir) == ["a (1).png", "a (2).png", "a.png"]  # no temporary file left
    assert [(input_dir / n).read_bytes() for n in ("a.png", "a (1).png", "a (2).png")] == [first, second, third]
    assert upload(client, "noext", b"x").get_json()["name"] == "noext"
    assert upload(client, "noext", b"y").get_json()["name"] == "noext (1)"


def test_concurrent_uploads_of_one_name_never_replace_each_other(context):
    from concurrent.futures import ThreadPoolExecutor

    contents = [b"content %d" % i for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(lambda data: context.storage.save_upload("input", "", "a.png", io.BytesIO(data), False),
                              contents))
    assert sorted(names) == sorted(["a.png"] + [f"a ({i}).png" for i in range(1, 8)])
    input_dir = context.storage.root("input")
    assert [(input_dir / name).read_bytes() for name in names] == contents


def test_upload_overwrite(client, context):
    input_dir = context.storage.root("input")
    upload(client, "a.png", b"old")
    assert upload(client, "a.png", b"new", overwrite="true").get_json()["name"] == "a.png"
    assert upload(client, "a.png", b"newer", overwrite="1").get_json()["name"] == "a.png"
    assert (input_dir / "a.png").read_bytes() == b"newer"
    # ComfyUI compares the value exactly: anything else keeps the existing file.
    assert upload(client, "a.png", b"other", overwrite="True").get_json()["name"] == "a (1).png"
    assert files_under(input_dir) == ["a (1).png", "a.png"]


def test_upload_into_subfolders_and_other_types(client, context):
    response = upload(client, "a.png", b"1", subfolder="x/y")
    assert response.get_json() == {"name": "a.png", "subfolder": "x/y", "type": "input"}
    assert (context.storage.root("input") / "x" / "y" / "a.png").read_bytes() == b"1"
    assert client.get("/view", query_string={"filename": "a.png", "subfolder": "x/y", "type": "input"}).data == b"1"
    for kind in ("temp", "output"):
        response = upload(client, "b.png", kind.encode(), type=kind, subfolder="s")
        assert response.get_json() == {"name": "b.png", "subfolder": "s", "type": kind}
        assert (context.storage.root(kind) / "s" / "b.png").read_bytes() == kind.encode()
    assert client.post("/api/upload/image", data={"image": (io.BytesIO(b"2"), "c.png")}).get_json() == \
        {"name": "c.png", "subfolder": "", "type": "input"}


def error_body(type_, message, details):
    return {"error": {"type": type_, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


@pytest.mark.parametrize("body,expected", [
    ({"type": "models", "image": (io.BytesIO(b"x"), "a.png")},
     error_body("invalid_type", "Invalid upload type", "type must be one of ['output', 'input', 'temp']")),
    ({"subfolder": "s"}, error_body("missing_image", "No image part in the upload", "the 'image' field is required")),
    ({"image": (io.BytesIO(b"x"), "")}, error_body("invalid_filename", "The uploaded file has no usable name", "")),
    ({"image": "not a file part"}, error_body("missing_image", "No image part in the upload",
                                              "the 'image' field is required")),
    ({"image": (io.BytesIO(b"x"), "dir/..")},
     error_body("invalid_filename", "The uploaded file has no usable name", "dir/..")),
])
def test_upload_refusals(client, context, body, expected):
    # Fresh file objects per run: the parameters are shared by the SQLite and PostgreSQL runs.
    body = {key: (io.BytesIO(value[0].getvalue()), value[1]) if isinstance(value, tuple) else value
            for key, value in body.items()}
    response = client.post("/upload/image", data=body, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json() == expected
    assert files_under(context.storage.root("input")) == []


@pytest.mark.parametrize("subfolder", ["../x", "../../x", "a/../../x", "/ABS"])
def test_upload_subfolder_cannot_leave_the_folder(client, context, tmp_path, subfolder):
    subfolder = subfolder.replace("/ABS", str(tmp_path / "abs"))
    before = files_under(tmp_path)
    response = upload(client, "a.png", b"x", subfolder=subfolder)
    assert response.status_code == 400 and response.get_json()["error"]["type"] == "invalid_path"
    assert files_under(tmp_path) == before
    assert not (tmp_path / "abs").exists() and not (context.settings.data_dir / "x").exists()


def test_upload_through_a_symlink_out_of_the_folder_is_400(client, context, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (context.storage.root("input") / "door").symlink_to(outside)
    assert upload(client, "a.png", b"x", subfolder="door").status_code == 400
    (context.storage.root("input") / "trap.png").symlink_to(outside / "trap.png")
    assert upload(client, "trap.png", b"x", overwrite="true").status_code == 400
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("filename", ["../../x.png", "/etc/x.png", "sub/x.png", "./x.png"])
def test_upload_filename_is_reduced_to_its_basename(client, context, tmp_path, filename):
    response = upload(client, filename, b"x")
    assert response.get_json() == {"name": "x.png", "subfolder": "", "type": "input"}
    assert files_under(context.storage.root("input")) == ["x.png"]
    assert not (context.settings.data_dir / "x.png").exists() and not (tmp_path / "x.png").exists()


def test_upload_over_the_limit_is_413(tmp_path, database_url):
    from farm.config import load_settings
    from farm.services.context import make_context
    from web import create_app

    settings = load_settings(env={}, data_dir=str(tmp_path / "d"), database_url=database_url, max_upload_bytes=1000)
    context = make_context(settings)
    client = create_app(settings, context=context).test_client()
    assert upload(client, "small.png", b"x" * 100).status_code == 200
    response = upload(client, "big.png", b"x" * 2000)
    assert response.status_code == 413 and response.get_json()["error"]["type"] == "request_too_large"
    assert files_under(context.storage.root("input")) == ["small.png"]
    context.database.dispose()


# -- POST /upload/mask ------------------------------------------------------------------------

TEXT = {"prompt": '{"1": {}}', "workflow": '{"id": "wf"}'}


@pytest.fixture
def original(context):
    folder = context.storage.root("output") / "sub"
    folder.mkdir()
    (folder / "orig.png").write_bytes(png_bytes("RGB", (4, 2), (200, 100, 50), TEXT))


def mask_png(size=(4, 2)) -> bytes:
    mask = Image.new("RGBA", size, (255, 255, 255, 0))
    mask.paste((9, 9, 9, 255), (0, 0, size[0] // 2, size[1]))  # left half opaque
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def upload_mask(client, reference, data=None, **fields):
    if not isinstance(reference, str):
        reference = json.dumps(reference)
    return upload(client, "mask.png", data or mask_png(), route="/upload/mask", original_ref=reference, **fields)


@pytest.mark.parametrize("reference,size", [
    ({"filename": "orig.png", "subfolder": "sub"}, (4, 2)),
    ({"filename": "orig.png [output]", "subfolder": "sub", "type": "input"}, (4, 2)),
    ({"filename": "orig.png", "subfolder": "sub", "type": "output"}, (8, 4)),  # scaled to the original
])
def test_upload_mask_replaces_the_alpha_and_keeps_the_text(client, context, original, reference, size):
    response = upload_mask(client, reference, mask_png(size), subfolder="clipspace")
    assert response.status_code == 200
    assert response.get_json() == {"name": "mask.png", "subfolder": "clipspace", "type": "input"}
    written = Image.open(context.storage.root("input") / "clipspace" / "mask.png")
    assert (written.format, written.mode, written.size) == ("PNG", "RGBA", (4, 2))
    # Left half opaque, right half transparent (a scaled mask blends the two middle columns).
    edges = [written.getpixel((x, y)) for x in (0, 3) for y in (0, 1)]
    assert edges == [(200, 100, 50, 255)] * 2 + [(200, 100, 50, 0)] * 2
    if size == (4, 2):
        assert pixels(written) == ([(200, 100, 50, 255)] * 2 + [(200, 100, 50, 0)] * 2) * 2
    assert written.text == TEXT
    again = upload_mask(client, reference, mask_png(size), subfolder="clipspace")
    assert again.get_json()["name"] == "mask.png"  # the same result is reused


@pytest.mark.parametrize("reference,status,type_", [
    (None, 400, "invalid_original_ref"),
    ("{not json", 400, "invalid_original_ref"),
    ('["orig.png"]', 400, "invalid_original_ref"),
    ({"subfolder": "sub"}, 400, "invalid_original_ref"),
    ({"filename": "orig.png", "subfolder": 3}, 400, "invalid_original_ref"),
    ({"filename": "../orig.png"}, 400, "invalid_filename"),
    ({"filename": "/orig.png"}, 400, "invalid_filename"),
    ({"filename": "orig.png", "subfolder": "sub", "type": "models"}, 400, "invalid_type"),
    ({"filename": "passwd", "subfolder": "/etc"}, 403, "forbidden"),
    ({"filename": "orig.png", "subfolder": "../../.."}, 403, "forbidden"),
    ({"filename": "orig.png"}, 404, "not_found"),
    ({"filename": "orig.png", "subfolder": "sub", "type": "input"}, 404, "not_found"),
])
def test_upload_mask_bad_original_ref(client, context, original, reference, status, type_):
    if reference is None:
        response = upload(client, "mask.png", mask_png(), route="/api/upload/mask")
    else:
        response = upload_mask(client, reference)
    assert response.status_code == status and response.get_json()["error"]["type"] == type_
    assert files_under(context.storage.root("input")) == []


def test_upload_mask_that_is_not_an_image_is_400(client, context, original):
    response = upload_mask(client, {"filename": "orig.png", "subfolder": "sub"}, b"not a picture")
    assert response.status_code == 400 and response.get_json()["error"]["type"] == "invalid_image"
    assert files_under(context.storage.root("input")) == []
