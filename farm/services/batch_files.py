"""A batch's outputs as one download: a streamed zip of every file, and a contact sheet (the sweep's
images in a grid, labelled with their values).

The zip is written as it is sent (zipfile writes data descriptors to a stream it cannot seek), so
a batch of any size costs one file's buffer, not the whole archive. Each file is stored under
`cell-<index>/<subfolder>/<name>`, beside `cells.csv` (index, prompt id, state, values).
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile

from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import select

from farm.db.models import Prompt, PromptState
from farm.storage import PathRejected

IMAGE_KINDS = ("images",)
TILE = 256
LABEL_HEIGHT = 28
HEADER = 40
MAX_SHEET_CELLS = 2500
_CHUNK = 1000


def _cells(database, batch_id: str):
    """(index, prompt_id, state, values, outputs) of every cell, in index order, read in pages."""
    after = -1
    while True:
        with database.reading() as session:
            rows = session.execute(
                select(Prompt.cell_index, Prompt.prompt_id, Prompt.state, Prompt.cell_values, Prompt.outputs)
                .where(Prompt.batch_id == batch_id, Prompt.cell_index > after)
                .order_by(Prompt.cell_index).limit(_CHUNK)
            ).all()
        yield from rows
        if len(rows) < _CHUNK:
            return
        after = rows[-1].cell_index


def _files(outputs: dict | None, kinds=("images", "gifs", "video", "audio")):
    for ui in (outputs or {}).values():
        for kind in kinds:
            for item in (ui or {}).get(kind, []) or []:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    yield item


class _Sink(io.RawIOBase):
    """What zipfile writes to: bytes collected until the generator hands them on."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def zip_stream(database, storage, batch_id: str):
    """The batch's outputs as zip bytes, chunk by chunk (`storage` is the batch team's)."""
    sink = _Sink()
    manifest = io.StringIO()
    table = csv.writer(manifest)
    table.writerow(["cell", "prompt_id", "state", "values", "files"])
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, prompt_id, state, values, outputs in _cells(database, batch_id):
            names = []
            if state == PromptState.SUCCESS.value:
                for item in _files(outputs):
                    ref = (item.get("type", "output"), item.get("subfolder", ""), item["filename"])
                    try:
                        stored = storage.stat(*ref)
                    except (PathRejected, FileNotFoundError):
                        continue
                    name = "/".join(part for part in (f"cell-{index:05d}", item.get("subfolder", ""),
                                                      item["filename"]) if part)
                    entry = zipfile.ZipInfo(name, date_time=stored.modified.timetuple()[:6])
                    # Images are compressed already: stored, not deflated (cheaper, no bigger).
                    entry.compress_type = zipfile.ZIP_STORED
                    try:
                        with storage.open(*ref) as source, archive.open(entry, "w", force_zip64=True) as target:
                            while chunk := source.read(1 << 20):
                                target.write(chunk)
                                yield sink.take()
                    except FileNotFoundError:
                        continue  # deleted between the two looks
                    names.append(name)
                    yield sink.take()
            table.writerow([index, prompt_id, state, json.dumps(values or {}, sort_keys=True), " ".join(names)])
        archive.writestr("cells.csv", manifest.getvalue())
    yield sink.take()


def _label(values: dict, keys: list[str] | None = None) -> str:
    keys = keys if keys is not None else list(values)
    return ", ".join(f"{key}={values.get(key)}" for key in keys)


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(database, storage, batch_id: str, sweep: dict, limit: int = 400) -> bytes:
    """A PNG grid of the first `limit` cells' first images. A product sweep of two or more axes is
    laid out with its last axis across (column headers) and the others down (row labels); any
    other batch is a square-ish grid with each tile captioned with its values."""
    cells = []
    for row in _cells(database, batch_id):
        cells.append(row)
        if len(cells) >= min(limit, MAX_SHEET_CELLS):
            break
    axes = list((sweep or {}).get("axes", {}).items())
    grid = sweep.get("mode") == "product" and len(axes) >= 2
    if grid:
        across_key, across = axes[-1][0], _axis_values(axes[-1][1])
        columns = len(across)
    else:
        columns = max(1, math.ceil(math.sqrt(len(cells) or 1)))
    rows = max(1, math.ceil(len(cells) / columns))
    font = ImageFont.load_default()
    left = 180 if grid else 0
    top = HEADER if grid else 0
    sheet = Image.new("RGB", (left + columns * TILE, top + rows * (TILE + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    if grid:
        for column, value in enumerate(across):
            draw.text((left + column * TILE + 6, 12), _fit(f"{across_key}={value}", draw, font, TILE - 12),
                      fill="black", font=font)
    for position, (index, _prompt_id, state, values, outputs) in enumerate(cells):
        column, row = position % columns, position // columns
        x, y = left + column * TILE, top + row * (TILE + LABEL_HEIGHT)
        tile = _first_image(storage, outputs) if state == PromptState.SUCCESS.value else None
        if tile is None:
            draw.rectangle((x + 2, y + 2, x + TILE - 3, y + TILE - 3), fill=(225, 225, 225))
            draw.text((x + 10, y + TILE // 2), state, fill=(90, 90, 90), font=font)
        else:
            tile.thumbnail((TILE - 4, TILE - 4))
            scale = (TILE - 4) // max(tile.width, tile.height)
            if scale > 1:  # a small render: shown larger, pixels kept sharp
                tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
            sheet.paste(tile, (x + (TILE - tile.width) // 2, y + (TILE - tile.height) // 2))
        values = values or {}
        if grid:
            caption = f"#{index}"
            if column == 0:
                others = [key for key, _ in axes[:-1]]
                draw.text((6, y + TILE // 2), _fit(_label(values, others), draw, font, left - 12), fill="black",
                          font=font)
        else:
            caption = f"#{index} {_label(values)}"
        draw.text((x + 4, y + TILE + 6), _fit(caption, draw, font, TILE - 8), fill="black", font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _axis_values(spec) -> list:
    if isinstance(spec, dict) and "range" in spec:
        start, stop, step = spec["range"]
        return list(range(start, stop + (1 if step > 0 else -1), step))
    return list(spec)


def _first_image(storage, outputs: dict | None) -> Image.Image | None:
    for item in _files(outputs, IMAGE_KINDS):
        try:
            with storage.open(item.get("type", "output"), item.get("subfolder", ""), item["filename"]) as handle, \
                    Image.open(handle) as image:
                image.draft("RGB", (TILE, TILE))  # JPEGs decode small at once
                return image.convert("RGB")
        except (OSError, ValueError, PathRejected, Image.DecompressionBombError):
            continue
    return None
