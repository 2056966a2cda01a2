"""Hostile uploads and previews: decompression bombs, truncated and non-image files, oversized and
malformed multipart bodies. Each is a clear 4xx in ComfyUI's error shape, nothing is decoded past
web.images.MAX_PIXELS, and /upload/image stores what it is given undecoded, as ComfyUI does."""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import zipfile
import zlib

import pytest
from PIL import Image, ImageFile

from web.images import MAX_PIXELS, MAX_SIDE

MAX_UPLOAD = 2 * 1024 * 1024
# Pillow warns when it opens an image of 89 to 179 million pixels; here that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture
def farm(tmp_path, sqlite_template):
    """(test client, context) of a farm on SQLite whose uploads are capped at MAX_UPLOAD bytes."""
    from farm.config import load_settings
    from farm.services.context import make_context
    from tests.conftest import RecordingSender
    from web import create_app

    database = tmp_path / "data" / "farm.db"
    database.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, database)
    config = load_settings(env={}, data_dir=str(tmp_path / "data"), models_dir=str(tmp_path / "models"),
                           database_url=f"sqlite:///{database}", max_upload_bytes=MAX_UPLOAD)
    context = make_context(config, sender=RecordingSender())
    yield create_app(config, context=context).test_client(), context
    context.database.dispose()


@pytest.fixture
def client(farm):
    return farm[0]


@pytest.fixture
def input_folder(farm):
    folder = farm[1].storage.root("input")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- files -------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header declares width x height 1-bit pixels, with one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00\x00")) \
        + _chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of zeros: kilobytes on disk, width x height pixels decoded."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png(size=(4, 2), color=(10, 20, 30, 128)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    """A noisy 64 x 64 PNG cut in the middle of its pixel data: it opens, it does not decode."""
    noise = random.Random(7).randbytes(64 * 64 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    return buffer.getvalue()


NOT_IMAGES = {
    "text": b"just some text\n",
    "random": random.Random(1).randbytes(4096),
    "zip": zip_bytes(),
    "empty": b"",
    "png signature only": b"\x89PNG\r\n\x1a\n",
}
BOMBS = {
    "100,000 x 100,000 declared": png_declaring(100_000, 100_000),  # Pillow's own hard limit
    "10,000 x 10,000 declared": png_declaring(10_000, 10_000),  # Pillow only warns about this one
    "just over the cap": png_declaring(MAX_SIDE + 1, MAX_SIDE),
}


def upload(client, data: bytes, name="a.png", route="/upload/image", **fields):
    return client.post(route, data={"image": (io.BytesIO(data), name), **fields}, content_type="multipart/form-data")


def refused(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.data[:500]
    body = response.get_json()
    assert set(body) == {"error", "node_errors"} and body["node_errors"] == {}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert body["error"]["type"] == error_type, body["error"]
    return body["error"]


@pytest.fixture
def decodes(monkeypatch):
    """The sizes of the images whose pixels get decoded (ImageFile.load), to show bombs never are."""
    sizes = []
    load = ImageFile.ImageFile.load

    def recording(image):
        sizes.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return sizes


# -- /upload/image: stored as sent --------------------------------------------------------------

@pytest.mark.parametrize("data", [*BOMBS.values(), *NOT_IMAGES.values(), truncated_png()],
                         ids=[*BOMBS, *NOT_IMAGES, "truncated png"])
def test_upload_image_stores_any_bytes_undecoded_as_comfyui_does(client, input_folder, decodes, data):
    response = upload(client, data, "file.png")
    assert response.status_code == 200
    assert response.get_json() == {"name": "file.png", "subfolder": "", "type": "input"}
    assert (input_folder / "file.png").read_bytes() == data
    assert decodes == []


# -- /upload/mask: both images are decoded, so both are checked first ---------------------------

@pytest.fixture
def original(input_folder):
    (input_folder / "orig.png").write_bytes(png())
    return {"filename": "orig.png", "type": "input"}


def upload_mask(client, data: bytes, reference: dict):
    return upload(client, data, "mask.png", route="/upload/mask", original_ref=json.dumps(reference))


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS)
def test_a_bomb_as_the_mask_is_refused_before_decoding(client, input_folder, original, decodes, bomb):
    error = refused(upload_mask(client, bomb, original), 400, "image_too_large")
    assert error["message"] == "The image is too large to decode" and error["details"].startswith("the mask: ")
    assert decodes == [] and sorted(p.name for p in input_folder.iterdir()) == ["orig.png"]


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS)
def test_a_bomb_as_the_original_is_refused_before_decoding(client, input_folder, decodes, bomb):
    (input_folder / "bomb.png").write_bytes(bomb)
    error = refused(upload_mask(client, png(), {"filename": "bomb.png", "type": "input"}), 400, "image_too_large")
    assert error["details"].startswith("the original: ")
    assert all(width * height <= MAX_PIXELS for width, height in decodes)  # the mask only
    assert sorted(p.name for p in input_folder.iterdir()) == ["bomb.png"]


def test_a_real_bomb_names_its_size_and_the_cap(client, input_folder, original, decodes):
    """12 KB of PNG that decodes to 10,000 x 10,000 pixels (400 MB as RGBA; it once took 1.1 GB)."""
    bomb = png_bomb(10_000, 10_000)
    assert len(bomb) < 20_000
    error = refused(upload_mask(client, bomb, original), 400, "image_too_large")
    assert error["details"] == (f"the mask: 10000 x 10000 pixels; at most {MAX_PIXELS} ({MAX_SIDE} x {MAX_SIDE}) "
                                "are decoded")
    assert decodes == []


@pytest.mark.parametrize("data", NOT_IMAGES.values(), ids=NOT_IMAGES)
def test_a_mask_that_is_not_an_image_is_400_without_server_paths(client, input_folder, original, data):
    error = refused(upload_mask(client, data, original), 400, "invalid_image")
    assert error["details"] == "the mask: not an image format the farm reads"
    assert sorted(p.name for p in input_folder.iterdir()) == ["orig.png"]


@pytest.mark.parametrize("data", NOT_IMAGES.values(), ids=NOT_IMAGES)
def test_an_original_that_is_not_an_image_is_400_without_server_paths(client, input_folder, data):
    (input_folder / "orig.png").write_bytes(data)
    error = refused(upload_mask(client, png(), {"filename": "orig.png", "type": "input"}), 400, "invalid_image")
    assert error["details"] == "the original: not an image format the farm reads"
    assert str(input_folder) not in error["details"]


def test_a_truncated_mask_or_original_is_400(client, input_folder, original):
    error = refused(upload_mask(client, truncated_png(), original), 400, "invalid_image")
    assert "truncated" in error["details"]
    (input_folder / "cut.png").write_bytes(truncated_png())
    error = refused(upload_mask(client, png(), {"filename": "cut.png", "type": "input"}), 400, "invalid_image")
    assert "truncated" in error["details"]
    assert sorted(p.name for p in input_folder.iterdir()) == ["cut.png", "orig.png"]


# -- /view: previews and channels decode; plain downloads do not --------------------------------

@pytest.mark.parametrize("query", [{"preview": "webp;50"}, {"preview": "jpeg;90"}, {"channel": "a"},
                                   {"channel": "rgb"}, {"preview": "webp", "channel": "a"}])
@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS)
def test_a_stored_bomb_viewed_with_a_preview_or_channel_is_400(client, input_folder, decodes, bomb, query):
    (input_folder / "bomb.png").write_bytes(bomb)
    response = client.get("/view", query_string={"filename": "bomb.png", "type": "input", **query})
    assert refused(response, 400, "image_too_large")["details"].startswith("bomb.png: ")
    assert decodes == []


def test_a_stored_bomb_is_served_as_bytes_when_no_preview_is_asked(client, input_folder, decodes):
    bomb = png_bomb(10_000, 10_000)
    (input_folder / "bomb.png").write_bytes(bomb)
    response = client.get("/view", query_string={"filename": "bomb.png", "type": "input"})
    assert response.status_code == 200 and response.mimetype == "image/png" and response.data == bomb
    assert decodes == []


@pytest.mark.parametrize("data", [*NOT_IMAGES.values(), truncated_png()], ids=[*NOT_IMAGES, "truncated png"])
def test_a_stored_non_image_viewed_with_a_preview_is_400(client, input_folder, data):
    (input_folder / "file.png").write_bytes(data)
    response = client.get("/view", query_string={"filename": "file.png", "type": "input", "preview": "webp;50"})
    error = refused(response, 400, "invalid_image")
    assert error["message"] == "The file is not an image that can be converted"
    assert str(input_folder) not in error["details"]


def test_an_image_within_the_cap_still_previews(client, input_folder):
    (input_folder / "ok.png").write_bytes(png((300, 200)))
    response = client.get("/view", query_string={"filename": "ok.png", "type": "input", "preview": "webp;50"})
    assert response.status_code == 200 and response.mimetype == "image/webp"
    assert Image.open(io.BytesIO(response.data)).size == (300, 200)


# -- multipart bodies --------------------------------------------------------------------------

class CountingStream(io.RawIOBase):
    """A request body of `size` bytes made up as it is read, counting what the server reads
    (seekable only so that the test client can measure it)."""

    def __init__(self, size: int, prefix: bytes = b""):
        self.size, self.prefix, self.position, self.read_bytes = size, prefix, 0, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, offset, whence=0):
        self.position = offset if whence == 0 else self.size + offset if whence == 2 else self.position + offset
        return self.position

    def readinto(self, buffer):
        count = max(0, min(len(buffer), self.size - self.position))
        start = self.position
        buffer[:count] = (self.prefix[start:start + count] + b"x" * count)[:count]
        self.position += count
        self.read_bytes += count
        return count


BOUNDARY = "hostileboundary"
PART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode()


@pytest.mark.parametrize("route", ["/upload/image", "/upload/mask", "/api/upload/image", "/prompt"])
def test_a_body_over_the_limit_is_413_in_the_error_shape_and_never_read(client, input_folder, route):
    body = CountingStream(10 * 1024 ** 3, PART_HEAD)  # 10 GB announced
    response = client.post(route, input_stream=body, content_length=body.size,
                           content_type=f"multipart/form-data; boundary={BOUNDARY}")
    assert refused(response, 413, "request_too_large")["message"] == "Request Entity Too Large"
    assert body.read_bytes == 0
    assert list(input_folder.iterdir()) == []


def test_a_body_without_a_length_is_cut_at_the_limit(client, input_folder):
    """Chunked uploads announce no length: the server stops reading just past the limit."""
    body = CountingStream(4 * MAX_UPLOAD, PART_HEAD)
    response = client.post("/upload/image", input_stream=body, content_type=f"multipart/form-data; boundary={BOUNDARY}",
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
    refused(response, 413, "request_too_large")
    assert body.read_bytes <= MAX_UPLOAD + 1024 * 1024
    assert list(input_folder.iterdir()) == []


def test_a_file_just_under_the_limit_is_stored(client, input_folder):
    data = b"y" * (MAX_UPLOAD - 4096)
    assert upload(client, data, "large.bin").status_code == 200
    assert (input_folder / "large.bin").stat().st_size == len(data)


MULTIPART = "multipart/form-data"


@pytest.mark.parametrize("route", ["/upload/image", "/upload/mask"])
@pytest.mark.parametrize("request_kwargs,error_type", [  # functions: a file part is read once
    (lambda: {"data": {"type": "input"}, "content_type": MULTIPART}, "missing_image"),
    (lambda: {"data": {"image": "text, not a file"}, "content_type": MULTIPART}, "missing_image"),
    (lambda: {"data": {"other": (io.BytesIO(b"x"), "a.png")}, "content_type": MULTIPART}, "missing_image"),
    (lambda: {"data": {"image": (io.BytesIO(png()), "")}, "content_type": MULTIPART}, "invalid_filename"),
    (lambda: {"data": {"image": (io.BytesIO(png()), "dir/..")}, "content_type": MULTIPART}, "invalid_filename"),
    (lambda: {"data": json.dumps({"image": "a.png"}), "content_type": "application/json"}, "missing_image"),
    (lambda: {"data": b"--nope\r\n\r\n", "content_type": f"{MULTIPART}; boundary={BOUNDARY}"}, "missing_image"),
    (lambda: {"data": b"", "content_type": MULTIPART}, "missing_image"),
], ids=["no file part", "a text part", "another part", "empty filename", "dot-dot filename", "json",
        "wrong boundary", "empty body"])
def test_malformed_multipart_bodies_are_400(client, input_folder, route, request_kwargs, error_type):
    refused(client.post(route, **request_kwargs()), 400, error_type)
    assert list(input_folder.iterdir()) == []


def test_a_worker_never_decodes_a_bomb_named_in_a_prompt(tmp_path):
    """/upload/image stores any bytes (as ComfyUI does); the worker's LoadImage then refuses to
    decode one whose header declares more than MAX_PIXELS, before any pixel is decoded."""
    from farm.engine.images import load_image

    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(ValueError, match="too large to decode"):
        load_image(path)
    path.write_bytes(png_declaring(MAX_SIDE, MAX_SIDE))  # the limit itself is decoded (it is truncated)
    with pytest.raises(OSError):
        load_image(path)
    path.write_bytes(png_declaring(MAX_SIDE + 1, MAX_SIDE))  # past the farm's limit, under Pillow's
    with pytest.raises(ValueError, match=f"{MAX_SIDE + 1} x {MAX_SIDE} pixels"):
        load_image(path)


def test_a_batch_with_values_the_database_cannot_store_is_refused(client):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    for sweep in ({"1.color": [1, float("nan")]}, {"2.filename_prefix": ["a\u0000b"]}):
        answer = client.post("/api/batches", data=json.dumps({"workflow": workflow, "sweep": sweep}),
                             content_type="application/json")
        assert answer.status_code == 400, answer.get_json()
        assert answer.get_json()["error"]["type"] == "invalid_batch"
